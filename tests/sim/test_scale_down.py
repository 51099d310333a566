"""A scale-down's ``stop`` hook holds the sync lock while the other units roll (simulator).

The principal's ``stop`` runs on the side (its machine's hooks wait, the others' go on), as
under Juju's per-machine lock; the demo principal leaves "its cluster" under
``RollingOps.sync_lock`` and records ``leave-start`` / ``leave-end`` with the grant's token.
"""

from __future__ import annotations

import json
from typing import Any

from rollingops_sim.cluster import Cluster
from test_rolling import events


def worker_events(cluster: Cluster, unit: str, name: str) -> list[dict[str, Any]]:
    log = cluster.unit_dir(unit) / "worker.log"
    return [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == name]


def test_a_stop_hook_holds_the_sync_lock_ahead_of_waiting_restarts_and_overlaps_none(simulate):
    cluster = simulate(5)
    # Hooks run one at a time here: the side hook starts once the first restart's hook ended.
    # The second restart outlasts that start (seconds under load: with 2 s, three restarts had
    # begun), so the sync hold is asked while the last two still wait.
    for machine, seconds in ((1, 2.0), (2, 10.0), (3, 2.0), (4, 2.0)):
        cluster.wait_queued(machine, cluster.request(machine, kwargs={"seconds": seconds}))
    cluster.run_until(lambda: len(events(cluster, "start")) >= 1, timeout=30)
    cluster.configure("principal/0", {"leave-seconds": 1.0})
    cluster.start_on_the_side("principal/0", "stop")
    cluster.run_until(
        lambda: cluster.side_hooks_done() and len(events(cluster, "end")) == 4, timeout=120
    )
    assert events(cluster, "leave-failed") == []
    (leave_start,) = events(cluster, "leave-start")
    (leave_end,) = events(cluster, "leave-end")
    starts = {r["op"]: r for r in events(cluster, "start")}
    ends = {r["op"]: r for r in events(cluster, "end")}
    for op, start in starts.items():
        overlap = start["ts"] < leave_end["ts"] and leave_start["ts"] < ends[op]["ts"]
        assert not overlap, f"{op} ran during the sync hold"
    (asked,) = worker_events(cluster, "rollingops/0", "sync-waiting")
    started_when_asked = sum(r["ts"] < asked["ts"] for r in starts.values())
    before = [r for r in starts.values() if r["ts"] < leave_start["ts"]]
    assert started_when_asked < 3, "the sync hold came while restarts were waiting"
    assert len(before) <= started_when_asked + 1, "the sync hold went ahead of the waiters"
    assert all(r["token"] < leave_start["token"] for r in before)
    after = [r for r in starts.values() if r["ts"] > leave_end["ts"]]
    assert after, "restarts waited for the sync hold"
    assert all(r["token"] > leave_start["token"] for r in after)
    cluster.remove_machine(0)
    assert "rollingops/0" not in cluster.contenders()


def test_without_etcd_the_stop_hook_is_told_at_once_and_goes_on(simulate_without_etcd):
    cluster = simulate_without_etcd(2)
    assert cluster.backend() == "peer"
    cluster.start_on_the_side("principal/0", "stop")
    cluster.run_until(cluster.side_hooks_done, timeout=30)
    (failed,) = events(cluster, "leave-failed")
    assert "only while etcd grants" in failed["reason"]
    assert events(cluster, "leave-start") == []
