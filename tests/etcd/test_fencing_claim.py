"""A holder that lost its lease never starts an operation (issue 9, finding 1).

The claim transaction must prove that the waiter key is still ours (same create revision, so
still within the first k): a worker that waited out a pause, or sat SIGSTOPped, while its lease
went away must not start with a stale token next to the new holder.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from etcd_helpers import WorkerFarm, operation, wait_until
from test_semaphore import max_overlap, semaphore
from test_worker import events, finished

from rollingops.control import DomainControl
from rollingops.etcd_client import EtcdClient
from rollingops.models import Outcome, utcnow
from rollingops.store import ConditionFailedError, OperationStore


def starts(farm: WorkerFarm) -> list[dict[str, Any]]:
    return [r for r in farm.records() if r["event"] == "start"]


def intervals(farm: WorkerFarm) -> list[tuple[float, float]]:
    """(start, end) of each hook run, from the fake charm's records."""
    records = farm.records()
    ends = {(r["unit"], r["op"], r["attempt"]): r["ts"] for r in records if r["event"] == "end"}
    return [(r["ts"], ends[(r["unit"], r["op"], r["attempt"])]) for r in starts(farm)]


def assert_old_holder_ran_only_after_the_new_one(
    farm: WorkerFarm, client: EtcdClient, stale: int
) -> None:
    """app/1 ran first, alone; app/0's operation was kept and ran later with a newer token."""
    (second,) = finished(farm, client, "app/1", 1)
    (first,) = finished(farm, client, "app/0", 1)
    assert [(r["unit"], r["op"]) for r in starts(farm)] == [
        ("app/1", "second"),
        ("app/0", "first"),
    ]
    assert max_overlap(intervals(farm)) == 1
    assert (first.outcome, second.outcome) == (Outcome.DONE, Outcome.DONE)
    assert stale < second.token < first.token
    assert first.attempts == 1, "the refused claim must not count as an attempt"
    # Told: as lock-lost, or as lease-lost when its key's deletion reached the semaphore first.
    wait_until(
        lambda: events(farm, "app/0", "lock-lost") or events(farm, "app/0", "lease-lost"),
        what="app/0 told it lost its lock",
    )


def test_force_released_holder_waiting_out_a_pause_never_starts(farm, client):
    control = DomainControl(client, farm.cluster.prefix, 1)
    control.pause("maintenance", by="operator")
    # A long TTL: the lease thread refreshes every 10 s, so it does not notice the revocation
    # before the claim does; the claim transaction alone must refuse the stale holder.
    farm.start("app/0", lease_ttl=30)
    farm.enqueue(client, "app/0", operation("first"))
    wait_until(lambda: events(farm, "app/0", "acquired"), what="app/0 holds, paused")
    farm.start("app/1", lease_ttl=30)
    farm.enqueue(client, "app/1", operation("second", hold=2))
    wait_until(lambda: events(farm, "app/1", "waiting"), what="app/1 waiting")
    (stale,) = control.force_release("app/0")
    wait_until(lambda: events(farm, "app/1", "acquired"), what="app/1 holds")
    assert control.resume()
    assert_old_holder_ran_only_after_the_new_one(farm, client, stale)


def test_holder_stopped_past_its_lease_never_starts_when_continued(farm, client):
    control = DomainControl(client, farm.cluster.prefix, 1)
    # Paused first, so the holder sits between acquire and claim while it is stopped.
    control.pause("maintenance", by="operator")
    holder = farm.start("app/0", lease_ttl=3)
    farm.enqueue(client, "app/0", operation("first"))
    (acquired,) = wait_until(lambda: events(farm, "app/0", "acquired"), what="app/0 holds")
    farm.start("app/1", lease_ttl=10)
    farm.enqueue(client, "app/1", operation("second", hold=3))
    wait_until(lambda: events(farm, "app/1", "waiting"), what="app/1 waiting")
    holder.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: events(farm, "app/1", "acquired"), what="app/0's lease expired")
        assert control.resume()
        wait_until(lambda: starts(farm), what="app/1 started")
    finally:
        holder.send_signal(signal.SIGCONT)
    assert_old_holder_ran_only_after_the_new_one(farm, client, acquired["token"])


def test_claim_is_refused_once_the_waiter_key_is_gone(etcd, client):
    holder = semaphore(client, etcd, "app/0")
    holder.acquire(timeout=5)
    store = OperationStore(client, etcd.prefix, "app/0")
    store.update(lambda queue: queue.enqueue(operation("a")))
    client.revoke_lease(holder._lease.id)
    with pytest.raises(ConditionFailedError):
        store.update(
            lambda queue: queue.claim(holder.token or 0, utcnow()),
            conditions=[holder.held_condition()],
        )
    queue = store.load().queue
    assert queue.current is None
    assert [op.id for op in queue.pending] == ["a"]
