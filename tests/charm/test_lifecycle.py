"""Identity, etcd relation, worker lifecycle and status, with ops.testing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import stat

import pytest
from charm_helpers import UNIT, peer, stored, unit_dir, worker_hook
from ops import testing
from rollingops_charm.identity import LABEL
from testbed.pki import CertificateAuthority

from rollingops.certificates import common_name, generate_client_identity
from rollingops.worker_config import WorkerConfig


def test_leader_creates_the_client_identity_in_an_app_secret(ctx, supervisor):
    out = ctx.run(ctx.on.install(), testing.State(leader=True, relations={peer()}))
    (secret,) = [s for s in out.secrets if s.label == LABEL]
    assert secret.owner == "app"
    content = secret.latest_content or {}
    assert content["key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert common_name(content["cert"]).startswith("rollingops-rollingops-")
    assert out.unit_status == testing.ActiveStatus(
        "peer backend (no etcd): idle (peer, max-concurrent 1)"
    )


def test_leader_renews_an_identity_close_to_expiry(ctx, supervisor):
    old = generate_client_identity(
        "old", lifetime=dt.timedelta(days=10), now=dt.datetime.now(dt.timezone.utc)
    )
    secret = testing.Secret({"key": old.key_pem, "cert": old.cert_pem}, label=LABEL, owner="app")
    out = ctx.run(ctx.on.update_status(), testing.State(leader=True, secrets={secret}))
    renewed = out.get_secret(label=LABEL).latest_content or {}
    assert renewed["cert"] != old.cert_pem
    assert common_name(renewed["cert"]) != "old"


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


def test_etcd_request_carries_prefix_and_certificate(ctx, supervisor):
    etcd = testing.Relation("etcd", remote_app_name="etcd")
    state = testing.State(
        leader=True, relations={peer(), etcd}, config={"cluster-id": "web-restarts"}
    )
    out = ctx.run(ctx.on.relation_created(etcd), state)
    out = ctx.run(ctx.on.update_status(), out)
    local = out.get_relation(etcd.id).local_app_data
    (sent,) = json.loads(local["requests"])
    assert sent["resource"] == "/rollingops/web-restarts/"
    mtls = out.get_secret(id=sent["secret-mtls"]).latest_content or {}
    identity = out.get_secret(label=LABEL).latest_content or {}
    assert mtls["mtls-cert"] == identity["cert"]
    assert "BEGIN PRIVATE KEY" not in json.dumps(dict(local))


def test_credentials_and_worker_config_are_private_and_the_worker_starts(
    ctx, supervisor, wired, tmp_path
):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    directory = unit_dir(tmp_path)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("client.key", "client.pem", "etcd-ca.pem", "worker.json"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    config = WorkerConfig.load(directory / "worker.json")
    assert config.unit == UNIT
    assert config.etcd.endpoints == wired.cluster.endpoints
    assert config.etcd.prefix == wired.cluster.prefix
    assert supervisor.calls == [("ensure_running", True)]
    assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")


def test_worker_restarts_on_upgrade_and_config_change_only(ctx, supervisor, wired):
    state = wired.state(peer(), leader=True)
    ctx.run(ctx.on.update_status(), state)
    ctx.run(ctx.on.update_status(), state)
    ctx.run(ctx.on.upgrade_charm(), state)
    ctx.run(ctx.on.config_changed(), wired.state(peer(), leader=True, config={"lease-ttl": 60}))
    assert supervisor.calls == [
        ("ensure_running", True),
        ("ensure_running", False),
        ("ensure_running", True),
        ("ensure_running", True),
    ]


def test_ca_rotation_and_certificate_renewal_restart_the_worker(ctx, supervisor, wired):
    ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    bundle = wired.cluster.ca_file.read_text() + CertificateAuthority.generate().cert_pem
    rotated_ca = testing.Secret({"tls-ca": bundle}, id=wired.secrets[2].id)
    secrets = [wired.secrets[0], wired.secrets[1], rotated_ca]
    state = testing.State(
        relations={wired.relation, peer()}, secrets=set(secrets), config=wired.config, leader=True
    )
    ctx.run(ctx.on.update_status(), state)
    renewed = generate_client_identity("renewed")
    secrets[0] = testing.Secret(
        {"key": renewed.key_pem, "cert": renewed.cert_pem},
        label=LABEL,
        owner="app",
        id=secrets[0].id,
    )
    ctx.run(
        ctx.on.update_status(),
        testing.State(
            relations={wired.relation, peer()}, secrets=set(secrets), config=wired.config
        ),
    )
    assert supervisor.calls == [("ensure_running", True)] * 3


def test_changed_endpoints_rewrite_the_worker_config_and_restart_it(
    ctx, supervisor, wired, tmp_path
):
    ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    requests = json.loads(wired.relation.remote_app_data["requests"])
    requests[0]["endpoints"] = ",".join([*wired.cluster.endpoints, "https://127.0.0.1:1"])
    moved = dataclasses.replace(
        wired.relation,
        remote_app_data={**wired.relation.remote_app_data, "requests": json.dumps(requests)},
    )
    state = testing.State(relations={moved, peer()}, secrets=set(wired.secrets),
                          config=wired.config, leader=True)  # fmt: skip
    ctx.run(ctx.on.update_status(), state)
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
