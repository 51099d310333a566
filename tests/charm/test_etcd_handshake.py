"""The etcd_client and client-cas relations against charmed-etcd's real provider code.

Every reply here is written by dpcharmlibs-interfaces' ``ResourceProviderEventHandler`` (and the
certificate-transfer requirer) in ops.testing, acting on a real test-bed etcd: users are created
and removed, and etcd restarts when its client trust store changes, as charmed-etcd does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from charm_helpers import peer, read_content, unit_dir
from ops import testing
from rollingops_charm.credentials import URGENT_MARGIN
from rollingops_charm.etcd_relation import request_id
from rollingops_charm.identity import LABEL, AppIdentity, client_cn
from testbed.charmed_etcd import (
    ETCD_ID,
    CharmedEtcd,
    certificates_bag,
    cluster_id,
    connect,
    relay,
)
from testbed.etcd import EtcdCluster

from rollingops.certificates import (
    UNIT_LEAF_LIFETIME,
    common_name,
    expires_at,
    generate_client_identity,
    is_signed_by,
    issue_client_certificate,
)
from rollingops.etcd_client import EtcdClient, EtcdSettings
from rollingops.worker_config import WorkerConfig

CLIENT_CA = "etcd-client-ca"


def etcd_relation() -> testing.Relation:
    return testing.Relation("etcd", id=ETCD_ID, remote_app_name="etcd")


def worker_settings(tmp_path) -> EtcdSettings:
    return WorkerConfig.load(unit_dir(tmp_path) / "worker.json").etcd


def round_trip(settings: EtcdSettings, key: str, value: bytes) -> bytes | None:
    """Write and read back a key with the worker's own credentials: proves etcd accepts them."""
    with EtcdClient(settings) as client:
        client.put(settings.prefix + key, value)
        found, _ = client.get(settings.prefix + key)
    return found.value if found else None


def test_non_leader_at_relation_created_publishes_once_leader_and_is_answered(
    ctx, supervisor, etcd: EtcdCluster
):
    provider = CharmedEtcd(etcd)
    relation = etcd_relation()
    state = testing.State(
        leader=False, relations={peer(), relation}, config={"cluster-id": cluster_id(etcd)}
    )
    out = ctx.run(ctx.on.relation_created(relation), state)
    assert out.get_relation(ETCD_ID).local_app_data == {}
    out = ctx.run(ctx.on.leader_elected(), dataclasses.replace(out, leader=True))
    (sent,) = json.loads(out.get_relation(ETCD_ID).local_app_data["requests"])
    assert sent["request-id"] == request_id("rollingops", out.model.uuid, etcd.prefix)
    out = relay(out, provider)
    cn = client_cn("rollingops", out.model.uuid, cluster_id(etcd))
    assert etcd.has_user(cn)
    out = ctx.run(ctx.on.relation_changed(out.get_relation(ETCD_ID)), out)
    assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")
    assert supervisor.calls[-1] == ("ensure_running", True)


def test_cluster_id_change_while_related_gets_a_new_user_and_prefix(
    ctx, supervisor, etcd: EtcdCluster, tmp_path
):
    given = connect(etcd)
    state = testing.State(
        leader=True,
        relations={peer(), given.relation},
        secrets=set(given.secrets),
        config=given.config,
        model=given.model,
    )
    out = ctx.run(ctx.on.update_status(), state)
    old_cn = client_cn("rollingops", given.model.uuid, cluster_id(etcd))
    out = ctx.run(
        ctx.on.config_changed(), dataclasses.replace(out, config={"cluster-id": "moved"})
    )
    new_cn = client_cn("rollingops", given.model.uuid, "moved")
    assert "waiting for charmed-etcd to grant" in out.unit_status.message
    assert f"{new_cn} on /rollingops/moved/" in out.unit_status.message
    out = relay(out, given.provider)
    assert given.provider.world.refused == []
    assert etcd.has_user(new_cn)
    assert etcd.has_user(old_cn)  # charmed-etcd keeps it until the relation is removed
    out = ctx.run(ctx.on.relation_changed(out.get_relation(ETCD_ID)), out)
    settings = worker_settings(tmp_path)
    assert settings.prefix == "/rollingops/moved/"
    assert round_trip(settings, "probe", b"moved") == b"moved"


def test_a_reply_for_another_request_or_an_unreadable_reply_never_errors_a_hook(
    ctx, supervisor, wired
):
    replies = json.loads(wired.relation.remote_app_data["requests"])
    foreign = {**replies[0], "request-id": "0123456789abcdef", "resource": "/elsewhere/"}
    for data in (
        {**wired.relation.remote_app_data, "requests": json.dumps([foreign])},
        {**wired.relation.remote_app_data, "requests": "{not json"},
        {"version": "v1", "requests": json.dumps([{"request-id": 5, "endpoints": ["x"]}])},
    ):
        relation = dataclasses.replace(wired.relation, remote_app_data=data)
        state = dataclasses.replace(wired.state(peer(), leader=True), relations={relation, peer()})
        out = ctx.run(ctx.on.relation_changed(relation), state)
        assert "waiting for charmed-etcd to grant" in out.unit_status.message


def test_remove_and_re_add_the_relation(ctx, supervisor, wired, tmp_path):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    cn = common_name(read_content(out.get_secret(label=LABEL)).enrolment.cert_pem)
    out = ctx.run(ctx.on.relation_broken(out.get_relation(ETCD_ID)), out)
    wired.provider.broken(wired.relation)
    assert supervisor.calls[-1] == ("remove", False)
    assert not wired.cluster.has_user(cn)
    again = testing.Relation("etcd", id=ETCD_ID + 100, remote_app_name="etcd")
    wired.provider.relate_again(again.id)
    out = dataclasses.replace(
        out, relations={r for r in out.relations if r.id != ETCD_ID} | {again}
    )
    out = ctx.run(ctx.on.relation_joined(again), out)
    out = relay(out, wired.provider)
    out = ctx.run(ctx.on.relation_changed(out.get_relation(again.id)), out)
    assert wired.cluster.has_user(cn)
    assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")
    assert round_trip(worker_settings(tmp_path), "again", b"1") == b"1"


def test_two_applications_on_one_cluster_id_share_the_prefix(
    ctx, supervisor, etcd: EtcdCluster, tmp_path, monkeypatch
):
    first = connect(etcd, app="alpha")
    second = connect(
        etcd,
        app="beta",
        model=first.model,
        provider=CharmedEtcd(etcd, requirer_app="beta", deployment=first.provider.world),
    )
    assert first.provider.world.refused == []
    for app, given in (("alpha", first), ("beta", second)):
        monkeypatch.setenv("ROLLINGOPS_STATE_DIR", str(tmp_path / app))
        context = testing.Context(
            type(ctx.charm_spec.charm_type.__name__, (ctx.charm_spec.charm_type,), {}),
            meta=ctx.charm_spec.meta,
            actions=ctx.charm_spec.actions,
            config=ctx.charm_spec.config,
            app_name=app,
            unit_id=0,
        )
        state = testing.State(
            leader=True,
            relations={peer(), given.relation},
            secrets=set(given.secrets),
            config=given.config,
            model=given.model,
        )
        out = context.run(context.on.update_status(), state)
        assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")
    alpha = WorkerConfig.load(tmp_path / "alpha" / "alpha-0" / "worker.json").etcd
    beta = WorkerConfig.load(tmp_path / "beta" / "beta-0" / "worker.json").etcd
    assert alpha.prefix == beta.prefix == etcd.prefix
    round_trip(alpha, "from-alpha", b"a")
    with EtcdClient(beta) as client:
        found, _ = client.get(beta.prefix + "from-alpha")
    assert found is not None
    assert found.value == b"a"


def with_client_ca(ctx, wired) -> testing.State:
    """The leader related to charmed-etcd and to its client-cas, the CA accepted by etcd."""
    client_ca = testing.Relation(CLIENT_CA, remote_app_name="etcd")
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), client_ca, leader=True))
    wired.provider.client_cas_changed(certificates_bag(out))
    return ctx.run(ctx.on.relation_changed(out.get_relation(client_ca.id)), out)


def test_client_cas_moves_the_unit_to_its_own_leaf_once_etcd_trusts_it(
    ctx, supervisor, wired, tmp_path
):
    restarts = wired.provider.world.restarts
    out = with_client_ca(ctx, wired)
    identity = read_content(out.get_secret(label=LABEL))
    assert wired.provider.world.client_cas == {identity.ca.cert_pem}
    assert wired.provider.world.restarts == restarts + 1
    settings = worker_settings(tmp_path)
    assert settings.cert_file == unit_dir(tmp_path) / "unit.pem"
    assert not (unit_dir(tmp_path) / "client.key").exists()
    assert is_signed_by(settings.cert_file.read_text(), identity.ca.cert_pem)
    assert round_trip(settings, "own-leaf", b"1") == b"1"
    ctx.run(ctx.on.action("lock-status"), out)
    assert (ctx.action_results or {})["etcd-credentials"] == "own leaf"


def test_own_leaf_renewal_needs_nothing_from_charmed_etcd(ctx, supervisor, wired, tmp_path):
    out = with_client_ca(ctx, wired)
    identity = read_content(out.get_secret(label=LABEL))
    restarts, calls = wired.provider.world.restarts, len(supervisor.calls)
    leaf = unit_dir(tmp_path) / "unit.pem"
    old = issue_client_certificate(
        identity.ca,
        common_name(leaf.read_text()),
        (unit_dir(tmp_path) / "unit.key").read_text(),
        UNIT_LEAF_LIFETIME,
        now=dt.datetime.now(dt.timezone.utc) - UNIT_LEAF_LIFETIME + URGENT_MARGIN * 4,
    )
    leaf.write_text(old)
    out = ctx.run(ctx.on.update_status(), out)
    assert leaf.read_text() != old
    assert expires_at(leaf.read_text()) > expires_at(old)
    assert wired.provider.world.restarts == restarts
    assert supervisor.calls[calls:] == [("ensure_running", True)]
    assert round_trip(worker_settings(tmp_path), "renewed", b"1") == b"1"


def test_enrolment_renewal_without_client_cas_restarts_etcd_once(ctx, supervisor, wired, tmp_path):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    restarts = wired.provider.world.restarts
    identity = read_content(out.get_secret(label=LABEL))
    soon = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=360)
    aged = AppIdentity(
        identity.ca,
        generate_client_identity(
            common_name(identity.enrolment.cert_pem), now=soon, ca=identity.ca
        ),
    )
    secret = dataclasses.replace(
        out.get_secret(label=LABEL), tracked_content=aged.content(), latest_content=aged.content()
    )
    others = {s for s in out.secrets if s.label != LABEL}
    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, secrets=others | {secret}))
    out = relay(out, wired.provider)
    assert wired.provider.world.restarts == restarts + 1
    out = ctx.run(ctx.on.update_status(), out)
    assert round_trip(worker_settings(tmp_path), "enrolled", b"1") == b"1"


def test_old_revisions_of_the_identity_are_removed_once_nobody_tracks_them(ctx, supervisor):
    out = ctx.run(ctx.on.install(), testing.State(leader=True, config={"cluster-id": "a"}))
    for cluster in ("b", "c"):  # each new cluster-id reissues the enrolment: a new revision
        out = ctx.run(
            ctx.on.config_changed(), dataclasses.replace(out, config={"cluster-id": cluster})
        )
    secret = out.get_secret(label=LABEL)
    ctx.run(ctx.on.secret_remove(secret, revision=2), out)
    assert ctx.removed_secret_revisions == [2]
