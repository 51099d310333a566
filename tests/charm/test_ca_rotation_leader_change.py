"""Leadership moves in the middle of a client CA rotation (ops.testing, real etcd, real
charmed-etcd provider code).

The old leader replaced the CA (the old one kept as ``previous-ca-cert``) and offered both over
``client-cas``; charmed-etcd has not taken them in yet when another unit becomes leader. The
new leader must finish that rotation, not start another; each unit keeps its leaf of the old
CA until etcd trusts the new one, then moves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from charm_helpers import read_content, unit_context
from ops import testing
from rollingops_charm.identity import LABEL, AppIdentity
from test_etcd_handshake import CLIENT_CA, aged, round_trip, with_client_ca
from testbed.charmed_etcd import certificates_bag

from rollingops.certificates import is_signed_by
from rollingops.etcd_client import EtcdSettings
from rollingops.worker_config import WorkerConfig


def settings_of(tmp_path: Path, unit: int) -> EtcdSettings:
    return WorkerConfig.load(tmp_path / "state" / f"rollingops-{unit}" / "worker.json").etcd


def own_leaf_in_use(tmp_path: Path, unit: int) -> str:
    """The certificate the unit's worker connects with, which must be the unit's own leaf."""
    in_use = settings_of(tmp_path, unit).cert_file.read_text()
    assert in_use == (tmp_path / "state" / f"rollingops-{unit}" / "unit.pem").read_text()
    return in_use


def with_secret(state: testing.State, secret: testing.Secret) -> testing.State:
    others = {s for s in state.secrets if s.label != LABEL}
    return dataclasses.replace(state, secrets=others | {secret})


def test_a_new_leader_finishes_the_ca_rotation_the_old_one_began(ctx, supervisor, wired, tmp_path):
    old_leader = with_client_ca(ctx, wired)
    identity = read_content(old_leader.get_secret(label=LABEL))
    other = unit_context(tmp_path / "charm-1", unit_id=1)
    follower = dataclasses.replace(old_leader, leader=False, stored_states=frozenset())
    for _ in range(2):  # a first adoption is the enrolment pair; the next probe, its own leaf
        follower = other.run(other.on.update_status(), follower)
    assert is_signed_by(own_leaf_in_use(tmp_path, 1), identity.ca.cert_pem)

    due = AppIdentity(aged(identity.ca, 4.5), identity.enrolment)  # within a year of expiry
    secret = dataclasses.replace(
        old_leader.get_secret(label=LABEL),
        tracked_content=due.content(),
        latest_content=due.content(),
    )
    old_leader = ctx.run(ctx.on.update_status(), with_secret(old_leader, secret))
    rotated = read_content(old_leader.get_secret(label=LABEL))
    assert rotated.previous_ca_cert == due.ca.cert_pem
    offered = certificates_bag(old_leader)

    # Leadership moves before charmed-etcd took the new CA in.
    client_cas = old_leader.get_relation(
        next(r.id for r in old_leader.relations if r.endpoint == CLIENT_CA)
    )
    new_leader = dataclasses.replace(
        with_secret(follower, old_leader.get_secret(label=LABEL)),
        leader=True,
        relations={*(r for r in follower.relations if r.id != client_cas.id), client_cas},
    )
    new_leader = other.run(other.on.leader_elected(), new_leader)
    assert read_content(new_leader.get_secret(label=LABEL)) == rotated, "no second rotation"
    assert certificates_bag(new_leader) == offered
    kept = settings_of(tmp_path, 1).cert_file.read_text()
    assert is_signed_by(kept, due.ca.cert_pem), "kept until etcd trusts the new CA"
    assert round_trip(settings_of(tmp_path, 1), "still-old-ca", b"1") == b"1"

    wired.provider.client_cas_changed(certificates_bag(new_leader))
    assert wired.provider.world.client_cas == rotated.trusted_cas
    new_leader = other.run(other.on.update_status(), new_leader)
    demoted = dataclasses.replace(
        with_secret(old_leader, new_leader.get_secret(label=LABEL)), leader=False
    )
    ctx.run(ctx.on.update_status(), demoted)
    for unit in (0, 1):
        assert is_signed_by(own_leaf_in_use(tmp_path, unit), rotated.ca.cert_pem)
        assert round_trip(settings_of(tmp_path, unit), f"new-ca-{unit}", b"1") == b"1"
