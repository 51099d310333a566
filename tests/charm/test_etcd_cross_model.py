"""charmed-etcd offered from a model of its own (``juju offer`` / ``juju consume``).

The provider is dpcharmlibs-interfaces' ``ResourceProviderEventHandler`` in its cross-model mode
(the relation's remote model differs from its own), acting on a real test-bed etcd. Juju cannot
share our secrets across models, so ``mtls-cert`` must travel encrypted with the key the
provider's library makes at relation-created.
"""

from __future__ import annotations

import dataclasses
import json

from charm_helpers import EtcdWiring, peer, read_content, unit_dir
from ops import testing
from rollingops_charm.etcd_relation import request_id
from rollingops_charm.identity import LABEL, client_cn
from test_etcd_handshake import (
    connected,
    renew_enrolment_soon,
    round_trip,
    with_client_ca,
    worker_settings,
)
from testbed.charmed_etcd import (
    ETCD_ID,
    CharmedEtcd,
    cluster_id,
    connect,
    relay,
    requirer_relation,
    with_reply,
)
from testbed.etcd import EtcdCluster

ON_ETCD = testing.ActiveStatus("idle (etcd, max-concurrent 1)")


def our_requests(state: testing.State) -> list[dict[str, str]]:
    return json.loads(state.get_relation(ETCD_ID).local_app_data.get("requests", "[]"))


def test_charmed_etcd_in_another_model_grants_our_request_and_the_unit_uses_etcd(
    ctx, supervisor, etcd: EtcdCluster, tmp_path
):
    given = connect(etcd, cross_model=True)
    assert given.relation.remote_model_uuid not in (None, given.model.uuid)
    out = connected(ctx, given)
    enrolment = read_content(out.get_secret(label=LABEL)).enrolment.cert_pem
    cn = client_cn("rollingops", given.model.uuid, cluster_id(etcd))
    # charmed-etcd's handler got prefix, certificate and CN: user made, leaf pinned, answered.
    assert given.provider.world.refused == []
    assert etcd.has_user(cn)
    assert given.provider.world.pinned["rollingops"] == {enrolment}
    (reply,) = json.loads(given.relation.remote_app_data["requests"])
    assert reply["request-id"] == request_id("rollingops", given.model.uuid, etcd.prefix)
    assert out.unit_status == ON_ETCD
    assert supervisor.calls[-1] == ("ensure_running", True)
    assert round_trip(worker_settings(tmp_path), "across", b"models") == b"models"
    # No secret of ours across models, and the certificate is not in the clear either.
    (sent,) = our_requests(out)
    assert sent.get("secret-mtls") is None
    assert sent["mtls-cert"]
    assert "BEGIN" not in json.dumps(dict(out.get_relation(ETCD_ID).local_app_data))


def test_a_hook_before_charmed_etcds_key_waits_and_publishes_once_it_comes(
    ctx, supervisor, etcd: EtcdCluster, tmp_path
):
    model = testing.Model()
    provider = CharmedEtcd(etcd, requirer_model_uuid=model.uuid)
    relation = requirer_relation(provider)
    state = testing.State(
        leader=True,
        relations={peer(), relation},
        config={"cluster-id": cluster_id(etcd)},
        model=model,
    )
    out = ctx.run(ctx.on.relation_joined(relation), state)
    # A request without its certificate would fail charmed-etcd's handler: none is sent yet.
    assert our_requests(out) == []
    created, provider_secrets = provider.created(out.get_relation(ETCD_ID))
    out = with_reply(out, created, provider_secrets)
    out = ctx.run(ctx.on.relation_changed(out.get_relation(ETCD_ID)), out)
    out = relay(out, provider)
    out = ctx.run(ctx.on.relation_changed(out.get_relation(ETCD_ID)), out)
    assert provider.world.refused == []
    assert out.unit_status == ON_ETCD
    assert round_trip(worker_settings(tmp_path), "late-key", b"1") == b"1"


def test_a_cluster_id_change_across_models_moves_to_the_new_user(
    ctx, supervisor, etcd: EtcdCluster, tmp_path
):
    given = connect(etcd, cross_model=True)
    out = connected(ctx, given)
    out = ctx.run(
        ctx.on.config_changed(), dataclasses.replace(out, config={"cluster-id": "moved"})
    )
    out = relay(out, given.provider)
    out = ctx.run(ctx.on.relation_changed(out.get_relation(ETCD_ID)), out)
    assert etcd.has_user(client_cn("rollingops", given.model.uuid, "moved"))
    assert given.provider.world.refused == []
    settings = worker_settings(tmp_path)
    assert settings.prefix == "/rollingops/moved/"
    assert round_trip(settings, "moved", b"1") == b"1"


def test_across_models_own_leaves_ride_through_an_enrolment_renewal_charmed_etcd_misses(
    ctx, supervisor, etcd: EtcdCluster, tmp_path
):
    """charmed-etcd's bulk handler skips a request whose user exists with the same CN, and
    across models no secret-changed tells it of a renewed ``mtls-cert``: the renewed enrolment
    leaf is not pinned. Units on their own leaves (``client-cas``) do not need it."""
    given = connect(etcd, cross_model=True)
    wired = EtcdWiring(
        etcd, given.relation, list(given.secrets), given.config, given.model, given.provider
    )
    out = with_client_ca(ctx, wired)
    own_leaf = (unit_dir(tmp_path) / "unit.pem").read_text()
    assert worker_settings(tmp_path).cert_file.read_text() == own_leaf
    out = ctx.run(ctx.on.update_status(), renew_enrolment_soon(out))
    renewed = read_content(out.get_secret(label=LABEL)).enrolment.cert_pem
    out = relay(out, given.provider)
    assert renewed not in given.provider.world.pinned["rollingops"]
    out = ctx.run(ctx.on.update_status(), out)
    assert worker_settings(tmp_path).cert_file.read_text() == own_leaf
    assert out.unit_status == ON_ETCD
    assert round_trip(worker_settings(tmp_path), "own-leaf", b"1") == b"1"
