"""The worker process on real etcd, with a fake juju-exec that plays the charm."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
from etcd_helpers import WorkerFarm, operation, wait_until
from test_semaphore import max_overlap

from rollingops.etcd_client import EtcdClient
from rollingops.models import OperationResult, Outcome
from rollingops.store import waiters_prefix
from rollingops.worker import Worker

HOSTILE_KWARGS: dict[str, Any] = {
    "spaces": "a b  c",
    "quotes": 'it\'s "quoted" `tick`',
    "flag": "--lease=1",
    "newlines": "line1\nline2\r\n",
    "unicode": "héllo ✓ 日本 \u0000",
    "shell": "$(rm -rf /); echo pwned | cat && true",
    "nested": {"--endpoints": ["http://evil:2379", None, 1.5, True]},
    "big": "x" * (16 * 1024),
}


def history(farm: WorkerFarm, client: EtcdClient, unit: str):
    return farm.store(client, unit).load().queue.history


def finished(farm: WorkerFarm, client: EtcdClient, unit: str, count: int):
    return wait_until(
        lambda: len(history(farm, client, unit)) >= count and history(farm, client, unit),
        timeout=60,
        what=f"{count} operations finished on {unit}",
    )


def events(farm: WorkerFarm, unit: str, name: str) -> list[dict[str, Any]]:
    return [line for line in farm.log(unit) if line["event"] == name]


def test_runs_each_queued_operation_in_order_then_goes_idle(farm, client):
    farm.start("app/0")
    farm.enqueue(
        client, "app/0", operation("a", "restart"), operation("b", "reload"), operation("c")
    )
    done = finished(farm, client, "app/0", 3)
    assert [(entry.id, entry.outcome) for entry in done] == [
        ("a", Outcome.DONE),
        ("b", Outcome.DONE),
        ("c", Outcome.DONE),
    ]
    tokens = [entry.token for entry in done]
    assert tokens == sorted(set(tokens))
    hooks = [r for r in farm.records() if r["event"] == "hook"]
    assert [r["hook"] for r in hooks] == ["rollingops-lock-granted"] * 3
    assert not any(r["context"] for r in hooks), "JUJU_CONTEXT_ID must not reach juju-exec"
    wait_until(lambda: events(farm, "app/0", "idle"), what="idle")
    assert client.get_prefix(waiters_prefix(farm.cluster.prefix)).kvs == []


def test_retry_hold_keeps_the_token_and_retry_release_takes_a_new_one(farm, client):
    farm.start("app/0")
    plan = ["retry-hold", "retry-release", "release"]
    farm.enqueue(client, "app/0", operation("a", results=plan))
    (entry,) = finished(farm, client, "app/0", 1)
    assert (entry.outcome, entry.attempts) == (Outcome.DONE, 3)
    starts = [r for r in farm.records() if r["event"] == "start"]
    assert [r["attempt"] for r in starts] == [1, 2, 3]
    first, second, third = (r["token"] for r in starts)
    assert first == second
    assert third > second


def test_operation_failing_past_max_retry_is_dropped_with_a_reason(farm, client):
    farm.start("app/0")
    op = operation("a", results=["retry-release"]).model_copy(update={"max_retry": 1})
    farm.enqueue(client, "app/0", op, operation("b"))
    dropped, done = finished(farm, client, "app/0", 2)
    assert (dropped.id, dropped.outcome, dropped.attempts) == ("a", Outcome.DROPPED, 2)
    assert "max-retry 1" in dropped.reason
    assert (done.id, done.outcome) == ("b", Outcome.DONE)


def test_hostile_kwargs_reach_the_charm_exactly(farm, client):
    farm.start("app/0")
    farm.enqueue(client, "app/0", operation("a", **HOSTILE_KWARGS))
    finished(farm, client, "app/0", 1)
    (start,) = [r for r in farm.records() if r["event"] == "start"]
    assert start["kwargs"] == HOSTILE_KWARGS


@pytest.mark.parametrize("capacity", [1, 3])
def test_sixteen_workers_never_exceed_k_concurrent_operations(farm, client, capacity):
    units = [f"app{n}/0" for n in range(16)]
    for unit in units:
        farm.start(unit, max_concurrent=capacity)
    for unit in units:
        farm.enqueue(client, unit, operation("op", hold=0.1))
    for unit in units:
        finished(farm, client, unit, 1)
    records = farm.records()
    intervals = [
        (start["ts"], end["ts"])
        for start in records
        if start["event"] == "start"
        for end in records
        if end["event"] == "end" and end["unit"] == start["unit"]
    ]
    assert sorted(r["unit"] for r in records if r["event"] == "start") == sorted(units)
    assert 1 <= max_overlap(intervals) <= capacity


def test_sigterm_releases_the_lock_at_once_and_keeps_the_operation(farm, client):
    ttl = 30
    holder = farm.start("app/0", lease_ttl=ttl)
    farm.enqueue(client, "app/0", operation("stuck", results=[None]))
    wait_until(lambda: events(farm, "app/0", "hook-fired"), what="holder granted")
    farm.start("app/1", lease_ttl=ttl)
    farm.enqueue(client, "app/1", operation("next"))
    wait_until(lambda: events(farm, "app/1", "waiting"), what="second waiting")
    holder.send_signal(signal.SIGTERM)
    signalled = time.time()
    assert holder.wait(timeout=10) == 0
    finished(farm, client, "app/1", 1)
    (granted,) = events(farm, "app/1", "acquired")
    assert granted["ts"] - signalled < ttl / 3
    store = farm.store(client, "app/0")
    queue = store.load().queue
    assert queue.current is not None
    assert queue.current.operation.id == "stuck"
    farm.start("app/0", lease_ttl=ttl)
    starts = lambda: [r for r in farm.records() if r["event"] == "start" and r["unit"] == "app/0"]  # noqa: E731
    wait_until(lambda: len(starts()) == 2, what="re-granted after restart")
    store.update(lambda q: q.report("stuck", OperationResult.RELEASE))
    (entry,) = finished(farm, client, "app/0", 1)
    assert (entry.id, entry.outcome, entry.attempts) == ("stuck", Outcome.DONE, 1)
    first, again = starts()
    assert again["token"] > first["token"]


def test_idle_worker_sends_no_etcd_request(farm, client, monkeypatch):
    config = farm.write_config("app/0")
    for name, value in farm.env().items():
        monkeypatch.setenv(name, value)
    stop = threading.Event()
    worker = Worker(config, stop)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        farm.enqueue(client, "app/0", operation("a"))
        finished(farm, client, "app/0", 1)
        wait_until(lambda: worker._lease is None, what="lease revoked")
        before = sum(worker.client.requests.values())
        time.sleep(3)
        assert sum(worker.client.requests.values()) == before
    finally:
        stop.set()
        thread.join(timeout=10)
