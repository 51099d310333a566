"""Identity, etcd relation, worker lifecycle and status, with ops.testing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import stat
import subprocess

import pytest
from charm_helpers import (
    UNIT,
    peer,
    principal_relation,
    read_content,
    record_of,
    request,
    stored,
    sub_bag,
    unit_dir,
    worker_hook,
)
from ops import testing
from rollingops_charm.etcd_relation import request_id
from rollingops_charm.identity import LABEL, AppIdentity
from rollingops_charm.worker_lifecycle import RESTART_WAIT_BOUND
from test_protocol import changed, finish, update_etcd_queue
from testbed.charmed_etcd import with_reply
from testbed.pki import CertificateAuthority

from rollingops.certificates import (
    ENROLMENT_LIFETIME,
    common_name,
    generate_client_identity,
    is_signed_by,
)
from rollingops.etcd_client import EtcdClient
from rollingops.models import OperationResult, Outcome, utcnow
from rollingops.sync_holds import SyncHold, SyncHolds
from rollingops.sync_holds import publish as publish_holds
from rollingops.worker_config import WorkerConfig


def test_leader_creates_the_client_ca_and_enrolment_in_an_app_secret(ctx, supervisor):
    out = ctx.run(ctx.on.install(), testing.State(leader=True, relations={peer()}))
    (secret,) = [s for s in out.secrets if s.label == LABEL]
    assert secret.owner == "app"
    identity = read_content(secret)
    assert identity.enrolment.key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert common_name(identity.enrolment.cert_pem).startswith("rollingops-rollingops-")
    assert is_signed_by(identity.enrolment.cert_pem, identity.ca.cert_pem)
    assert out.unit_status == testing.ActiveStatus(
        "peer backend (no etcd): idle (peer, max-concurrent 1)"
    )


def test_leader_renews_an_enrolment_close_to_expiry_under_the_same_ca(ctx, supervisor):
    out = ctx.run(ctx.on.install(), testing.State(leader=True))
    first = read_content(out.get_secret(label=LABEL))
    soon = dt.datetime.now(dt.timezone.utc) - (ENROLMENT_LIFETIME - dt.timedelta(days=10))
    old = generate_client_identity(common_name(first.enrolment.cert_pem), now=soon, ca=first.ca)
    aged = AppIdentity(first.ca, old)
    secret = dataclasses.replace(
        out.get_secret(label=LABEL), tracked_content=aged.content(), latest_content=aged.content()
    )
    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, secrets={secret}))
    renewed = read_content(out.get_secret(label=LABEL))
    assert renewed.enrolment.cert_pem != old.cert_pem
    assert renewed.ca == first.ca
    assert common_name(renewed.enrolment.cert_pem) == common_name(old.cert_pem)


def test_non_leader_waits_for_the_identity(ctx, supervisor):
    state = testing.State(leader=False, relations={peer(), testing.Relation("etcd")})
    out = ctx.run(ctx.on.start(), state)
    assert out.unit_status == testing.WaitingStatus(
        "waiting for the client certificate from the leader"
    )
    assert not [s for s in out.secrets if s.label == LABEL]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"cluster-id": "has/slash"}, "cluster-id invalid"),
        ({"cluster-id": "x" * 64}, "cluster-id invalid"),
        ({"cluster-id": "UPPER"}, "cluster-id invalid"),
        ({"max-concurrent": 0}, "max-concurrent invalid"),
        ({"lease-ttl": 1}, "lease-ttl invalid"),
    ],
)
def test_bad_config_blocks_with_the_reason_and_stops_nothing_else(
    ctx, supervisor, config, message
):
    out = ctx.run(ctx.on.config_changed(), testing.State(leader=True, config=config))
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(message)


def test_etcd_request_carries_request_id_prefix_and_enrolment_certificate(ctx, supervisor):
    etcd = testing.Relation("etcd", remote_app_name="etcd")
    state = testing.State(
        leader=True, relations={peer(), etcd}, config={"cluster-id": "web-restarts"}
    )
    out = ctx.run(ctx.on.relation_created(etcd), state)
    out = ctx.run(ctx.on.update_status(), out)
    local = out.get_relation(etcd.id).local_app_data
    (sent,) = json.loads(local["requests"])
    assert sent["resource"] == "/rollingops/web-restarts/"
    assert sent["request-id"] == request_id("rollingops", out.model.uuid, sent["resource"])
    mtls = out.get_secret(id=sent["secret-mtls"]).latest_content or {}
    identity = read_content(out.get_secret(label=LABEL))
    assert mtls["mtls-cert"] == identity.enrolment.cert_pem
    assert "BEGIN PRIVATE KEY" not in json.dumps(dict(local))


def test_credentials_and_worker_config_are_private_and_the_worker_starts(
    ctx, supervisor, wired, tmp_path
):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    directory = unit_dir(tmp_path)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    names = ("client.key", "client.pem", "etcd-ca.pem", "worker.json")
    for name in names:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    config = WorkerConfig.load(directory / "worker.json")
    assert config.unit == UNIT
    assert config.etcd.endpoints == wired.cluster.endpoints
    assert config.etcd.prefix == wired.cluster.prefix
    assert supervisor.calls == [("ensure_running", True)]
    assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")


def test_the_sync_socket_is_published_while_etcd_grants_with_a_launcher_beside_it(
    ctx, supervisor, wired, tmp_path
):
    state = wired.state(peer(), principal_relation(), leader=True)
    out = ctx.run(ctx.on.update_status(), state)
    socket = unit_dir(tmp_path) / "sync.sock"
    assert sub_bag(out)["sync-socket"] == str(socket)
    command = unit_dir(tmp_path) / "rollingops-lock"
    assert stat.S_IMODE(command.stat().st_mode) == 0o700
    assert repr(str(socket)) in command.read_text()
    (relation,) = [r for r in out.relations if r.endpoint == "etcd"]
    out = ctx.run(ctx.on.relation_broken(relation), out)
    assert sub_bag(out)["sync-socket"] is None, "no sync grants under peer"


def test_worker_restarts_on_upgrade_and_config_change_only(ctx, supervisor, wired):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    out = ctx.run(ctx.on.update_status(), out)
    out = ctx.run(ctx.on.upgrade_charm(), out)
    longer = dataclasses.replace(out, config={**out.config, "lease-ttl": 60})
    out = ctx.run(ctx.on.config_changed(), longer)
    assert supervisor.calls == [
        ("ensure_running", True),
        ("ensure_running", False),
        ("ensure_running", True),
        ("ensure_running", True),
    ]


def test_a_config_change_waits_for_the_running_operation_before_restarting(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    update_etcd_queue(wired, lambda q: q.claim(5, utcnow()))
    out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current is not None
    out = ctx.run(
        ctx.on.config_changed(), dataclasses.replace(out, config={**out.config, "lease-ttl": 60})
    )
    assert supervisor.calls == [("ensure_running", True), ("ensure_running", False)]
    finish(wired, OperationResult.RELEASE)
    ctx.run(ctx.on.update_status(), out)
    assert supervisor.calls[-1] == ("ensure_running", True)


def test_server_ca_rotation_by_charmed_etcd_restarts_the_worker(ctx, supervisor, wired, tmp_path):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    wired.provider.world.extra_server_ca = CertificateAuthority.generate().cert_pem
    out = with_reply(out, *wired.provider.refresh())
    tls = next(s for s in out.secrets if "tls-ca" in (s.latest_content or {}))
    out = ctx.run(ctx.on.secret_changed(tls), out)
    ca_file = (unit_dir(tmp_path) / "etcd-ca.pem").read_text()
    assert wired.provider.world.extra_server_ca in ca_file
    assert supervisor.calls == [("ensure_running", True)] * 2


def test_changed_endpoints_rewrite_the_worker_config_and_restart_it(
    ctx, supervisor, wired, tmp_path
):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    wired.provider.world.extra_endpoints = ["127.0.0.1:1"]
    out = with_reply(out, *wired.provider.refresh())
    ctx.run(ctx.on.relation_changed(out.get_relation(wired.relation.id)), out)
    config = WorkerConfig.load(unit_dir(tmp_path) / "worker.json")
    assert config.etcd.endpoints == [*wired.cluster.endpoints, "127.0.0.1:1"]
    assert supervisor.calls == [("ensure_running", True), ("ensure_running", True)]


def test_etcd_relation_broken_stops_the_worker(ctx, supervisor, wired):
    out = ctx.run(ctx.on.relation_broken(wired.relation), wired.state(peer(), leader=True))
    assert supervisor.calls[-1] == ("remove", False)
    assert out.unit_status == testing.ActiveStatus(
        "peer backend (no etcd): idle (peer, max-concurrent 1)"
    )


def test_stop_removes_the_worker_and_the_unit_files(ctx, supervisor, wired, tmp_path):
    state = wired.state(peer(), leader=True)
    ctx.run(ctx.on.update_status(), state)
    assert unit_dir(tmp_path).exists()
    ctx.run(ctx.on.stop(), state)
    assert supervisor.calls[-1] == ("remove", False)
    assert not unit_dir(tmp_path).exists()


def test_etcd_failed_hook_falls_back_to_peer_and_stops_the_worker(ctx, supervisor, wired):
    supervisor.running = True
    wired.cluster.members[0].kill()
    out = ctx.run(worker_hook("rollingops_etcd_failed"), wired.state(peer(), leader=True))
    assert out.unit_status.message.startswith("peer fallback since ")
    assert out.unit_status.message.endswith("(own domain): idle (peer, max-concurrent 1)")
    assert supervisor.calls[-1] == ("remove", False)
    decision = json.loads(out.get_relations("cluster")[0].local_app_data["backend"])
    assert (decision["backend"], decision["reason"]) == ("peer", "a worker gave up on etcd")


def test_unreadable_record_blocks_with_the_reason_and_is_kept(ctx, supervisor):
    state = testing.State(leader=True, relations={peer()}, stored_states={stored("{not json")})
    out = ctx.run(ctx.on.update_status(), state)
    assert out.unit_status == testing.BlockedStatus("unit record unreadable: 1 errors")
    kept = out.get_stored_state("_stored", owner_path="RollingOpsCharm").content["record"]
    assert kept == "{not json"


def test_fallback_none_grants_nothing_and_says_why(ctx, supervisor, wired):
    wired.cluster.members[0].kill()
    state = wired.state(peer(), leader=True, config={"fallback": "none"})
    out = ctx.run(worker_hook("rollingops_etcd_failed"), state)
    assert out.unit_status.message.startswith("no grants: etcd lost since ")
    assert out.unit_status.message.endswith(" and fallback=none")
    decision = json.loads(out.get_relations("cluster")[0].local_app_data["backend"])
    assert decision["backend"] == "none"


def test_corrupt_or_misplaced_credential_files_are_replaced_not_fatal(
    ctx, supervisor, wired, tmp_path
):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    directory = unit_dir(tmp_path)
    (directory / "client.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    (directory / "client.key").unlink()
    (directory / "client.key").mkdir()
    (directory / "etcd-ca.pem").chmod(0o644)
    out = ctx.run(ctx.on.update_status(), out)
    assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")
    for name in ("client.key", "client.pem", "etcd-ca.pem"):
        assert (directory / name).is_file(), name
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    settings = WorkerConfig.load(directory / "worker.json").etcd
    with EtcdClient(settings) as client:
        client.put(settings.prefix + "after-repair", b"1")


def test_upgrade_waits_for_the_running_operation_before_restarting_the_worker(
    ctx, supervisor, wired
):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    update_etcd_queue(wired, lambda q: q.claim(5, utcnow()))
    out = ctx.run(ctx.on.update_status(), out)
    calls = len(supervisor.calls)
    out = ctx.run(ctx.on.upgrade_charm(), out)
    assert ("ensure_running", True) not in supervisor.calls[calls:]
    finish(wired, OperationResult.RELEASE)
    ctx.run(ctx.on.update_status(), out)
    assert supervisor.calls[-1] == ("ensure_running", True)


def test_a_unit_keeps_its_working_pair_while_the_secret_is_unusable(
    ctx, supervisor, wired, tmp_path
):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    old = generate_client_identity("rollingops-rollingops-00000000")
    secret = dataclasses.replace(
        out.get_secret(label=LABEL),
        tracked_content={"key": old.key_pem, "cert": old.cert_pem},
        latest_content={"key": old.key_pem, "cert": old.cert_pem},
    )
    others = {s for s in out.secrets if s.label != LABEL}
    follower = dataclasses.replace(out, leader=False, secrets=others | {secret})
    calls = len(supervisor.calls)
    out = ctx.run(ctx.on.upgrade_charm(), follower)
    assert ("remove", False) not in supervisor.calls[calls:]
    assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")


def test_a_lost_lock_shows_in_status_and_reaches_the_principal(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    now = utcnow()
    update_etcd_queue(
        wired, lambda q: q.claim(5, now).abandon(Outcome.LOCK_LOST, "lease revoked", now)
    )
    out = ctx.run(ctx.on.update_status(), out)
    assert out.unit_status == testing.ActiveStatus(
        "idle (etcd, max-concurrent 1); last op op1: lock-lost"
    )
    finished = json.loads(out.get_relations("rollingops")[0].local_unit_data["finished"])
    assert finished == [
        {"id": "op1", "outcome": "lock-lost", "attempts": 1, "reason": "lease revoked"}
    ]


def _hold(tmp_path, *holders: str) -> None:
    """What a living worker publishes while it serves these holds (this process stands in for
    its pid: alive for the whole test)."""
    since = utcnow()
    holds = tuple(
        SyncHold(holder=holder, context="command", token=7 + n, since=since)
        for n, holder in enumerate(holders)
    )
    publish_holds(unit_dir(tmp_path), holds)


def _restarts(supervisor) -> int:
    return supervisor.calls.count(("ensure_running", True))


def test_a_config_change_waits_for_a_running_sync_hold_and_says_so(
    ctx, supervisor, wired, tmp_path
):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    _hold(tmp_path, "maintenance.sh")
    before = _restarts(supervisor)
    longer = dataclasses.replace(out, config={**out.config, "lease-ttl": 60})
    out = ctx.run(ctx.on.config_changed(), longer)
    assert _restarts(supervisor) == before, "the worker serving a hold was restarted"
    assert out.unit_status == testing.ActiveStatus(
        "idle (etcd, max-concurrent 1); worker restart waits for sync hold by "
        "maintenance.sh (token 7)"
    )
    assert (unit_dir(tmp_path) / "restart-pending").exists(), "the worker's cue is missing"
    _hold(tmp_path)  # the hold ended
    out = ctx.run(ctx.on.update_status(), out)
    assert _restarts(supervisor) == before + 1
    assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")
    assert not (unit_dir(tmp_path) / "restart-pending").exists()


def test_a_hold_file_of_a_dead_worker_holds_nothing_back(ctx, supervisor, wired, tmp_path):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    dead = SyncHolds(
        worker_pid=2**22 + 1,  # above pid_max's default: no such process
        holds=(SyncHold(holder="gone", context="hook", token=3, since=utcnow()),),
    )
    (unit_dir(tmp_path) / "sync-holds.json").write_text(dead.model_dump_json())
    before = _restarts(supervisor)
    ctx.run(ctx.on.upgrade_charm(), out)
    assert _restarts(supervisor) == before + 1


def test_a_hold_file_of_a_dead_worker_whose_pid_was_reused_holds_nothing_back(
    ctx, supervisor, wired, tmp_path
):
    """A worker SIGKILLed (OOM) under a hold leaves its file; its pid then names another process.

    Before, the charm took the living stranger for the worker and held restarts back for the
    whole bound (an hour), saying it waited for a hold that was long gone.
    """
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        stale = SyncHolds(
            worker_pid=stranger.pid,
            worker_start=1,  # the dead worker's start time, not the stranger's
            holds=(SyncHold(holder="gone", context="command", token=3, since=utcnow()),),
        )
        (unit_dir(tmp_path) / "sync-holds.json").write_text(stale.model_dump_json())
        before = _restarts(supervisor)
        out = ctx.run(ctx.on.upgrade_charm(), out)
    finally:
        stranger.kill()
        stranger.wait()
    assert _restarts(supervisor) == before + 1
    assert "waits" not in out.unit_status.message


def test_a_waiting_restart_goes_ahead_past_the_bound(ctx, supervisor, wired, tmp_path):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    _hold(tmp_path, "hung-script")
    before = _restarts(supervisor)
    out = ctx.run(ctx.on.upgrade_charm(), out)
    assert _restarts(supervisor) == before
    kept = out.get_stored_state("_stored", owner_path="RollingOpsCharm")
    long_ago = utcnow() - RESTART_WAIT_BOUND - dt.timedelta(seconds=1)
    aged = dataclasses.replace(
        kept, content={**kept.content, "restart_waiting_since": long_ago.isoformat()}
    )
    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, stored_states={aged}))
    assert _restarts(supervisor) == before + 1
