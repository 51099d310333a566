"""End to end on the simulator: real charms, real workers, real etcd."""

from __future__ import annotations

from typing import Any

import pytest
from rollingops_sim.cluster import Cluster


def events(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [r for r in cluster.records() if r["event"] == name]


def request_in_order(cluster: Cluster, machines: range, **kwargs: Any) -> list[str]:
    """Each machine requests one restart, each queued before the next is asked."""
    ops = []
    for machine in machines:
        op_id = cluster.request(machine, kwargs=kwargs)
        cluster.wait_queued(machine, op_id)
        ops.append(op_id)
    return ops


def max_overlap(intervals: list[tuple[str, float, float]]) -> int:
    points = sorted([(a, 1) for _, a, _ in intervals] + [(b, -1) for _, _, b in intervals])
    current = peak = 0
    for _, delta in points:
        current += delta
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("units", [5, 10])
def test_rolling_restart_runs_each_unit_once_one_at_a_time_in_request_order(simulate, units):
    cluster = simulate(units)
    ops = request_in_order(cluster, range(units))
    cluster.run_until(lambda: len(events(cluster, "end")) == units, timeout=90)
    starts = events(cluster, "start")
    assert sorted(r["unit"] for r in starts) == sorted(f"principal/{m}" for m in range(units))
    assert [r["op"] for r in starts] == ops, "granted in request order"
    tokens = [r["token"] for r in starts]
    assert tokens == sorted(set(tokens))
    assert max_overlap(cluster.hold_intervals()) == 1


def test_never_more_than_k_units_hold_the_lock(simulate):
    cluster = simulate(6, max_concurrent=2)
    request_in_order(cluster, range(6), results=["release"])
    cluster.run_until(lambda: len(events(cluster, "end")) == 6, timeout=90)
    assert max_overlap(cluster.hold_intervals()) == 2


def test_a_unit_with_three_queued_operations_runs_all_three(simulate):
    cluster = simulate(2)
    for callback in ("restart", "reload", "restart"):
        cluster.request(0, callback=callback, kwargs={"n": callback})
    cluster.run_until(lambda: len(events(cluster, "end")) == 3, timeout=60)
    assert [r["callback"] for r in events(cluster, "end")] == ["restart", "reload", "restart"]


def test_retry_hold_keeps_the_token_and_retry_release_requeues(simulate):
    cluster = simulate(2)
    cluster.request(0, kwargs={"results": ["retry-hold", "retry-release", "release"]})
    cluster.run_until(lambda: len(events(cluster, "end")) == 3, timeout=60)
    ends = events(cluster, "end")
    assert [(r["attempt"], r["result"]) for r in ends] == [
        (1, "retry-hold"),
        (2, "retry-release"),
        (3, "release"),
    ]
    assert ends[0]["token"] == ends[1]["token"] < ends[2]["token"]


def test_failing_callback_is_retried_then_dropped_past_max_retry(simulate):
    cluster = simulate(1)
    op_id = cluster.request(0, callback="flaky", kwargs={"fail-times": 5}, max_retry=2)
    cluster.run_until(lambda: op_id in {e.id for e in cluster.etcd_queue(0).history}, timeout=60)
    assert [r["attempt"] for r in events(cluster, "fail")] == [1, 2, 3]
    (entry,) = cluster.etcd_queue(0).history
    assert (entry.outcome.value, entry.attempts) == ("dropped", 3)


def test_failing_callback_succeeds_within_max_retry(simulate):
    cluster = simulate(1)
    cluster.request(0, callback="flaky", kwargs={"fail-times": 1}, max_retry=2)
    cluster.run_until(lambda: len(events(cluster, "end")) == 1, timeout=60)
    assert [r["attempt"] for r in events(cluster, "fail")] == [1]
    assert events(cluster, "end")[0]["attempt"] == 2


def test_a_new_leader_keeps_the_rolling_going(simulate):
    cluster = simulate(3)
    cluster.elect(2)
    cluster.settle()
    request_in_order(cluster, range(3))
    cluster.run_until(lambda: len(events(cluster, "end")) == 3, timeout=60)
    assert max_overlap(cluster.hold_intervals()) == 1


def test_a_removed_unit_gives_the_lock_back_and_the_others_go_on(simulate):
    cluster = simulate(3)
    cluster.request(0, kwargs={"results": [None]})
    cluster.run_until(lambda: len(events(cluster, "end")) == 1, timeout=60)
    request_in_order(cluster, range(1, 3))
    cluster.remove_machine(0)
    cluster.run_until(lambda: len(events(cluster, "end")) == 3, timeout=60)
    assert [r["unit"] for r in events(cluster, "end")[1:]] == ["principal/1", "principal/2"]
