"""The etcd_client and client-cas relations against charmed-etcd's real provider code.

Every reply here is written by dpcharmlibs-interfaces' ``ResourceProviderEventHandler`` (and the
certificate-transfer requirer) in ops.testing, acting on a real test-bed etcd: users are created
and removed, and etcd restarts when its client trust store changes, as charmed-etcd does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from charm_helpers import peer, principal_relation, read_content, record_of, request, unit_dir
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from ops import testing
from rollingops_charm.etcd_relation import request_id
from rollingops_charm.identity import LABEL, AppIdentity, client_cn
from scenario.mocking import _MockModelBackend
from test_protocol import changed
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
    CA_LIFETIME,
    UNIT_LEAF_LIFETIME,
    ClientIdentity,
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


def connected(ctx, given) -> testing.State:
    """A leader connected through ``given`` (from ``connect``), after one update-status."""
    state = testing.State(
        leader=True,
        relations={peer(), given.relation},
        secrets=set(given.secrets),
        config=given.config,
        model=given.model,
    )
    return ctx.run(ctx.on.update_status(), state)


def reconfigure(ctx, out: testing.State, cluster: str) -> testing.State:
    return ctx.run(
        ctx.on.config_changed(), dataclasses.replace(out, config={"cluster-id": cluster})
    )


def test_cluster_id_change_moves_to_a_new_user_once_charmed_etcd_granted_it(
    ctx, supervisor, etcd: EtcdCluster, tmp_path
):
    given = connect(etcd)
    out = connected(ctx, given)
    old_cn = client_cn("rollingops", given.model.uuid, cluster_id(etcd))
    out = reconfigure(ctx, out, "moved")
    # Until charmed-etcd answers, the unit keeps serving the old domain with the old pair.
    assert worker_settings(tmp_path).prefix == etcd.prefix
    assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")
    out = relay(out, given.provider)
    new_cn = client_cn("rollingops", given.model.uuid, "moved")
    assert given.provider.world.refused == []
    assert etcd.has_user(new_cn)
    assert etcd.has_user(old_cn)  # charmed-etcd keeps it until the relation is removed
    out = ctx.run(ctx.on.relation_changed(out.get_relation(ETCD_ID)), out)
    settings = worker_settings(tmp_path)
    assert settings.prefix == "/rollingops/moved/"
    assert common_name(settings.cert_file.read_text()) == new_cn
    assert round_trip(settings, "probe", b"moved") == b"moved"


def test_cluster_id_back_and_forth_never_breaks_the_unit_or_charmed_etcd(
    ctx, supervisor, etcd: EtcdCluster, tmp_path
):
    given = connect(etcd)
    out = connected(ctx, given)
    for cluster in ("moved", cluster_id(etcd), "moved"):
        out = reconfigure(ctx, out, cluster)
        out = relay(out, given.provider)  # a provider hook that fails raises here
        out = ctx.run(ctx.on.relation_changed(out.get_relation(ETCD_ID)), out)
        settings = worker_settings(tmp_path)
        assert settings.prefix == f"/rollingops/{cluster}/"
        assert round_trip(settings, "k", cluster.encode()) == cluster.encode()
    (mine,) = [r for r in out.relations if r.id == ETCD_ID]
    requests = json.loads(mine.local_app_data["requests"])
    assert all(r["secret-mtls"] for r in requests)
    assert given.provider.world.refused == []


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
    client_ca = testing.Relation(
        CLIENT_CA, remote_app_name="etcd", remote_app_data=wired.provider.client_cas_created()
    )
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
    directory = unit_dir(tmp_path)
    settings = worker_settings(tmp_path)
    assert settings.cert_file.read_text() == (directory / "unit.pem").read_text()
    assert is_signed_by(settings.cert_file.read_text(), identity.ca.cert_pem)
    on_disk = "".join(f.read_text() for f in directory.iterdir() if f.is_file())
    assert identity.enrolment.key_pem not in on_disk  # the shared key is gone from this unit
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
        now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=5),
    )
    leaf.write_text(old)
    (unit_dir(tmp_path) / "client.pem").write_text(old)
    out = ctx.run(ctx.on.update_status(), out)
    out = relay(out, wired.provider)  # whatever the hook published reaches charmed-etcd
    assert expires_at(leaf.read_text()) > expires_at(old)
    assert worker_settings(tmp_path).cert_file.read_text() == leaf.read_text()
    assert wired.provider.world.restarts == restarts
    assert supervisor.calls[calls:] == [("ensure_running", True)]
    assert round_trip(worker_settings(tmp_path), "renewed", b"1") == b"1"


def renew_enrolment_soon(out: testing.State) -> testing.State:
    """The leader's secret as it is 360 days after issuing the enrolment leaf."""
    identity = read_content(out.get_secret(label=LABEL))
    soon = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=360)
    cn = common_name(identity.enrolment.cert_pem)
    aged = AppIdentity(identity.ca, generate_client_identity(cn, now=soon, ca=identity.ca))
    secret = dataclasses.replace(
        out.get_secret(label=LABEL), tracked_content=aged.content(), latest_content=aged.content()
    )
    others = {s for s in out.secrets if s.label != LABEL}
    return dataclasses.replace(out, secrets=others | {secret})


def test_enrolment_renewal_keeps_the_working_pair_until_etcd_accepts_the_new_one(
    ctx, supervisor, wired, tmp_path
):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    before = worker_settings(tmp_path).cert_file.read_text()
    restarts = wired.provider.world.restarts
    out = ctx.run(ctx.on.update_status(), renew_enrolment_soon(out))
    renewed = read_content(out.get_secret(label=LABEL)).enrolment.cert_pem
    assert renewed != before
    # Not pinned yet: the probe fails, the unit keeps its working pair.
    assert worker_settings(tmp_path).cert_file.read_text() == before
    assert round_trip(worker_settings(tmp_path), "still", b"1") == b"1"
    out = relay(out, wired.provider)
    assert wired.provider.world.restarts == restarts + 1
    out = ctx.run(ctx.on.update_status(), out)
    assert worker_settings(tmp_path).cert_file.read_text() == renewed
    assert round_trip(worker_settings(tmp_path), "enrolled", b"1") == b"1"


def aged(ca: ClientIdentity, years: float) -> ClientIdentity:
    """The same CA (key and name) as its certificate would look ``years`` after issue."""
    key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    issued = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=365 * years)
    builder = x509.CertificateBuilder(
        issuer_name=cert.issuer,
        subject_name=cert.subject,
        public_key=key.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=issued,
        not_valid_after=issued + CA_LIFETIME,
        extensions=list(cert.extensions),
    )
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return ClientIdentity(ca.key_pem, pem.decode())


def test_a_new_client_ca_keeps_the_own_leaf_until_etcd_trusts_the_new_ca(
    ctx, supervisor, wired, tmp_path
):
    out = with_client_ca(ctx, wired)
    working = worker_settings(tmp_path).cert_file.read_text()
    identity = read_content(out.get_secret(label=LABEL))
    old = AppIdentity(aged(identity.ca, 4.5), identity.enrolment)
    secret = dataclasses.replace(
        out.get_secret(label=LABEL), tracked_content=old.content(), latest_content=old.content()
    )
    others = {s for s in out.secrets if s.label != LABEL}
    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, secrets=others | {secret}))
    fresh = read_content(out.get_secret(label=LABEL))
    assert fresh.ca.cert_pem != identity.ca.cert_pem
    assert fresh.previous_ca_cert == old.ca.cert_pem
    # etcd does not trust the new CA yet: the unit keeps its leaf of the old one.
    assert worker_settings(tmp_path).cert_file.read_text() == working
    assert round_trip(worker_settings(tmp_path), "old-ca", b"1") == b"1"
    wired.provider.client_cas_changed(certificates_bag(out))
    assert wired.provider.world.client_cas == fresh.trusted_cas
    out = ctx.run(ctx.on.update_status(), out)
    now_used = worker_settings(tmp_path).cert_file.read_text()
    assert is_signed_by(now_used, fresh.ca.cert_pem)
    assert round_trip(worker_settings(tmp_path), "new-ca", b"1") == b"1"


def test_old_revisions_of_the_identity_are_removed_once_nobody_tracks_them(ctx, supervisor):
    out = ctx.run(ctx.on.install(), testing.State(leader=True, config={"cluster-id": "a"}))
    for cluster in ("b", "c"):  # each new cluster-id reissues the enrolment: a new revision
        out = ctx.run(
            ctx.on.config_changed(), dataclasses.replace(out, config={"cluster-id": cluster})
        )
    secret = out.get_secret(label=LABEL)
    ctx.run(ctx.on.secret_remove(secret, revision=2), out)
    assert ctx.removed_secret_revisions == [2]


def test_a_garbled_own_key_is_replaced_and_the_working_pair_kept(ctx, supervisor, wired, tmp_path):
    out = with_client_ca(ctx, wired)
    working = worker_settings(tmp_path).cert_file.read_text()
    (unit_dir(tmp_path) / "unit.key").write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    out = ctx.run(ctx.on.update_status(), out)
    assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")
    fresh = (unit_dir(tmp_path) / "unit.pem").read_text()
    # The new own leaf is trusted through the CA: the unit moves to it after the probe.
    assert fresh != working
    assert worker_settings(tmp_path).cert_file.read_text() == fresh
    assert round_trip(worker_settings(tmp_path), "new-key", b"1") == b"1"


def test_a_reply_nested_beyond_reason_is_not_an_answer(ctx, supervisor, wired):
    deep = "[" * 100_000 + "]" * 100_000
    relation = dataclasses.replace(
        wired.relation, remote_app_data={**wired.relation.remote_app_data, "requests": deep}
    )
    state = dataclasses.replace(wired.state(peer(), leader=True), relations={relation, peer()})
    out = ctx.run(ctx.on.relation_changed(relation), state)
    assert "waiting for charmed-etcd to grant" in out.unit_status.message


def test_a_hook_reads_charmed_etcds_reply_once(ctx, supervisor, wired, monkeypatch):
    """Each read of the reply is a ``secret-get`` per secret field, a process each in Juju."""
    calls: list[str] = []
    original = _MockModelBackend.secret_get

    def counted(self: _MockModelBackend, *args: Any, **kwargs: Any) -> Any:
        calls.append(f"{kwargs.get('id')}/{kwargs.get('label')}")
        return original(self, *args, **kwargs)

    principal = principal_relation(requests=[request("op1")])
    out = changed(ctx, wired, principal)
    monkeypatch.setattr(_MockModelBackend, "secret_get", counted)
    principal = out.get_relations("rollingops")[0]
    ctx.run(ctx.on.relation_changed(principal, remote_unit=0), out)
    assert record_of(out).queue.pending or record_of(out).queue.current, "a connected unit"
    replies = [call for call in calls if "/etcd." in call]  # charmed-etcd's secret fields
    per_read = 2  # ops' get_secret, then the library's get_content
    assert replies, "the hook did read charmed-etcd's reply"
    assert len(replies) == per_read * len(set(replies)), f"the reply read twice: {replies}"
