"""The leader's app secret (client CA, enrolment pair) tampered with, on a unit using etcd.

Whatever the secret holds, no hook fails (a failing hook is retried by Juju for ever), the
unit keeps working with its pair and says so, and nothing queued is lost; the leader replaces
or repairs what it cannot use.
"""

from __future__ import annotations

import dataclasses

import pytest
from charm_helpers import UNIT, peer, principal_relation, request
from ops import testing
from rollingops_charm.identity import LABEL
from test_protocol import changed
from testbed.workers import settings_for

from rollingops.certificates import generate_client_ca, generate_client_identity, is_signed_by
from rollingops.etcd_client import EtcdClient
from rollingops.store import OperationStore

STRANGER = generate_client_identity("rollingops-other-0", ca=generate_client_ca("other CA"))
"""Another application's enrolment pair: a leaf, signed by another CA."""
GARBLED = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
TAMPERINGS = {
    "previous CA garbled": {"previous-ca-cert": GARBLED},
    "previous CA is a leaf": {"previous-ca-cert": STRANGER.cert_pem},
    "CA garbled": {"ca-cert": GARBLED},
    "enrolment from elsewhere": {"cert": STRANGER.cert_pem},
    "key truncated": {"key": STRANGER.key_pem[:60]},
    "not PEM at all": dict.fromkeys(("ca-key", "ca-cert", "key", "cert"), "x" * 10),
    "empty": dict.fromkeys(("ca-key", "ca-cert", "key", "cert"), ""),
}


@pytest.mark.parametrize("leader", [True, False], ids=["leader", "follower"])
@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_a_tampered_identity_fails_no_hook_and_loses_nothing(
    ctx, supervisor, wired, tampering, leader
):
    out = changed(ctx, wired, principal_relation(requests=[request("queued")]))
    secret = out.get_secret(label=LABEL)
    content = {**(secret.latest_content or {}), **TAMPERINGS[tampering]}
    secret = dataclasses.replace(secret, tracked_content=content, latest_content=content)
    others = {s for s in out.secrets if s.label != LABEL}
    state = dataclasses.replace(out, leader=leader, secrets=others | {secret})
    for event in (ctx.on.update_status(), ctx.on.config_changed(), ctx.on.upgrade_charm()):
        state = ctx.run(event, state)  # raises if the hook failed
        assert isinstance(state.unit_status, testing.ActiveStatus)
        assert state.unit_status.message.endswith("1 queued here"), "still on etcd, queued"
    with EtcdClient(settings_for(wired.cluster)) as client:
        queue = OperationStore(client, wired.cluster.prefix, UNIT).load().queue
    assert [op.id for op in queue.pending] == ["queued"]
    if leader:
        stored = state.get_secret(label=LABEL).latest_content or {}
        previous = stored.get("previous-ca-cert")
        assert previous is None or is_signed_by(previous, previous), "repaired"
        assert stored["cert"] != STRANGER.cert_pem


def test_the_leader_drops_a_garbled_previous_ca_and_keeps_its_identity(ctx, supervisor, wired):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    secret = out.get_secret(label=LABEL)
    kept = dict(secret.latest_content or {})
    content = {**kept, "previous-ca-cert": GARBLED}
    secret = dataclasses.replace(secret, tracked_content=content, latest_content=content)
    others = {s for s in out.secrets if s.label != LABEL}
    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, secrets=others | {secret}))
    assert out.get_secret(label=LABEL).latest_content == kept, "same CA and enrolment"
