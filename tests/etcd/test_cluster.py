"""Three-member etcd: losing one member is invisible; losing quorum is reported in time."""

from __future__ import annotations

import time

from etcd_helpers import operation, settings_for, wait_until
from test_liveness_hung_member import follower, frozen, pinned
from test_worker import events, finished

from rollingops.etcd_client import EtcdClient
from rollingops.worker import EXIT_ETCD_FAILED


def test_one_member_down_everything_keeps_working(etcd_cluster, cluster_farm):
    etcd_cluster.members[0].kill()
    with EtcdClient(settings_for(etcd_cluster)) as client:
        for unit in ("app/0", "app/1"):
            cluster_farm.start(unit)
            cluster_farm.enqueue(client, unit, operation("a"), operation("b", n=2))
        for unit in ("app/0", "app/1"):
            assert len(finished(cluster_farm, client, unit, 2)) == 2


def test_quorum_lost_worker_reports_failure_within_its_deadline_then_recovers(
    etcd_cluster, cluster_farm
):
    deadline = 3.0
    worker = cluster_farm.start("app/0", failure_deadline=deadline)
    wait_until(lambda: events(cluster_farm, "app/0", "started"), what="worker started")
    time.sleep(0.5)
    etcd_cluster.members[1].kill()
    etcd_cluster.members[2].kill()
    lost = time.monotonic()
    assert worker.wait(timeout=60) == EXIT_ETCD_FAILED
    # Noticing takes at most one bounded call (5 s) after the watch breaks, then the deadline.
    assert time.monotonic() - lost < deadline + 2 * 5.0 + 5.0
    hooks = [r["hook"] for r in cluster_farm.records() if r["event"] == "hook"]
    assert hooks == ["rollingops-etcd-failed"]
    (failed,) = events(cluster_farm, "app/0", "etcd-failed")
    assert failed["deadline"] == deadline

    etcd_cluster.members[1].restart()
    etcd_cluster.members[2].restart()
    with EtcdClient(settings_for(etcd_cluster)) as client:
        cluster_farm.start("app/0", failure_deadline=deadline)
        cluster_farm.enqueue(client, "app/0", operation("after"))
        (entry,) = finished(cluster_farm, client, "app/0", 1)
    assert entry.id == "after"


def test_a_hook_reaches_etcd_within_its_2s_bound_when_the_first_endpoint_is_frozen(etcd_cluster):
    """Charm hooks get 2 s per call (``HOOK_ETCD_BOUND``); a hung first endpoint used to take
    all of it. Now each attempt gets a share of what is left, and the client stays away from
    the hung endpoint afterwards."""
    member = follower(etcd_cluster)
    key = etcd_cluster.prefix + "hook"
    with frozen(member), EtcdClient(pinned(etcd_cluster, member, total_timeout=2.0)) as client:
        assert client.settings.call_timeout == 2.0
        client.put(key, b"written by a hook")
        value, _ = client.get(key)
        assert value is not None
        assert value.value == b"written by a hook"
        assert client.endpoint != member.endpoint
        sent = client.requests.total()
        client.get(key)
        assert client.requests.total() == sent + 1
