"""The fair fenced semaphore on real etcd, with contenders in separate processes."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from etcd_helpers import Contender, wait_until
from testbed.etcd import EtcdCluster
from testbed.workers import settings_for

from rollingops.etcd_client import EtcdClient
from rollingops.lease import Lease, LeaseLostError
from rollingops.semaphore import AcquireCancelledError, FairSemaphore
from rollingops.store import waiters_prefix


def semaphore(client: EtcdClient, etcd: EtcdCluster, owner: str, capacity: int = 1, ttl: int = 5):
    lease = Lease(client, ttl)
    return FairSemaphore(client, waiters_prefix(etcd.prefix), capacity, lease, owner)


def event(contender: Contender, name: str) -> dict[str, Any]:
    return next(line for line in contender.events() if line["event"] == name)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Largest number of intervals open at one instant (an end sorts before a start)."""
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = peak = 0
    for _, delta in points:
        open_now += delta
        peak = max(peak, open_now)
    return peak


def queue_everyone(
    client: EtcdClient, etcd: EtcdCluster, start: Callable[..., Contender], count: int, **kw: Any
) -> tuple[list[FairSemaphore], list[Contender]]:
    """Fill every slot from the test, then start ``count`` contenders, each queued in turn.

    Returns the gate holders: releasing them lets the whole queue run.
    """
    capacity = kw.get("capacity", 1)
    gates = [semaphore(client, etcd, f"gate{n}", capacity) for n in range(capacity)]
    for gate in gates:
        gate.acquire(timeout=5)
    started: list[Contender] = []
    for index in range(count):
        started.append(start(f"c{index:02d}", **kw))
        queued = capacity + index + 1
        wait_until(lambda n=queued: len(gates[0].contenders()) == n, what=f"contender {index}")
    return gates, started


@pytest.mark.parametrize("capacity", [1, 3])
def test_never_more_than_k_holders_among_16_processes(etcd, client, contenders, capacity):
    gates, started = queue_everyone(client, etcd, contenders, 16, capacity=capacity, hold=0.1)
    for gate in gates:
        gate.release()
    intervals = []
    for contender in started:
        lines = contender.wait()
        assert contender.process.returncode == 0, lines
        acquired, releasing = event(contender, "acquired"), event(contender, "releasing")
        intervals.append((acquired["ts"], releasing["ts"]))
    assert max_overlap(intervals) == capacity


def test_grants_follow_request_order_and_tokens_strictly_increase(etcd, client, contenders):
    (gate,), started = queue_everyone(client, etcd, contenders, 8, hold=0.02)
    gate_token = gate.token
    gate.release()
    for contender in started:
        contender.wait()
    acquired = sorted((event(c, "acquired") for c in started), key=lambda line: line["ts"])
    assert [line["owner"] for line in acquired] == [c.owner for c in started]
    tokens = [gate_token] + [line["token"] for line in acquired]
    assert tokens == sorted(set(tokens))


def test_sigkilled_holder_frees_the_lock_when_its_lease_expires_not_before(
    etcd, client, contenders
):
    ttl = 3
    holder = contenders("holder", ttl=ttl, hold=-1)
    wait_until(lambda: '"acquired"' in holder.process.stdout.readline(), what="holder acquired")
    waiter = semaphore(client, etcd, "waiter", ttl=ttl)
    holder.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    waiter.acquire(timeout=ttl + 10)
    waited = time.monotonic() - killed
    # The lease was refreshed at most ttl/3 before the kill, so it outlives the kill by more
    # than 2/3 of its TTL; it must not be released sooner than that.
    assert waited >= ttl * 2 / 3


def test_sigterm_holder_releases_before_its_lease_could_expire(etcd, client, contenders):
    ttl = 30
    holder = contenders("holder", ttl=ttl, hold=-1)
    wait_until(lambda: '"acquired"' in holder.process.stdout.readline(), what="acquired")
    waiter = semaphore(client, etcd, "waiter", ttl=ttl)
    holder.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    waiter.acquire(timeout=ttl)
    assert time.monotonic() - signalled < ttl / 3
    assert holder.process.wait(timeout=10) == 0


def test_paused_holder_learns_it_lost_the_lock_when_resumed(etcd, client, contenders):
    ttl = 2
    holder = contenders("holder", ttl=ttl, hold=-1)
    wait_until(lambda: '"acquired"' in holder.process.stdout.readline(), what="acquired")
    holder.process.send_signal(signal.SIGSTOP)
    waiter = semaphore(client, etcd, "waiter", ttl=ttl)
    token = waiter.acquire(timeout=ttl + 10)
    holder.process.send_signal(signal.SIGCONT)
    lines = holder.wait(timeout=20)
    assert holder.process.returncode == 2
    lost = event(holder, "lost")
    assert lost["token"] < token
    assert not any(line["event"] == "releasing" for line in lines)


def test_acquire_timeout_raises_and_gives_up_the_place(etcd, client):
    holder = semaphore(client, etcd, "holder")
    holder.acquire(timeout=5)
    late = semaphore(client, etcd, "late")
    with pytest.raises(TimeoutError):
        late.acquire(timeout=0.5)
    assert [c.owner for c in holder.contenders()] == ["holder"]


def test_waiter_that_loses_its_lease_stops_waiting(etcd, client):
    holder = semaphore(client, etcd, "holder")
    holder.acquire(timeout=5)
    waiter = semaphore(client, etcd, "waiter", ttl=3)
    failures: list[BaseException] = []

    def wait_in_thread() -> None:
        try:
            waiter.acquire(timeout=30)
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=wait_in_thread)
    thread.start()
    wait_until(lambda: len(holder.contenders()) == 2, what="waiter queued")
    client.revoke_lease(waiter._lease.id)
    thread.join(timeout=30)
    assert [type(error) for error in failures] == [LeaseLostError]
    assert [c.owner for c in holder.contenders()] == ["holder"]


@pytest.mark.parametrize("capacity", [1, 2])
def test_a_release_is_delivered_only_to_the_waiters_it_can_make_holders(etcd, client, capacity):
    """Each waiter watches the k keys ahead of it: a release wakes one waiter, not the queue."""
    holders = [semaphore(client, etcd, f"holder{n}", capacity) for n in range(capacity)]
    for holder in holders:
        holder.acquire(timeout=5)
    clients = [EtcdClient(settings_for(etcd)) for _ in range(5)]
    waiters = [semaphore(c, etcd, f"waiter{n}", capacity) for n, c in enumerate(clients)]
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        for index, waiter in enumerate(waiters):
            threads.append(threading.Thread(target=_acquire_until, args=(waiter, stop)))
            threads[-1].start()
            wait_until(
                lambda n=capacity + index + 1: len(holders[0].contenders()) == n,
                what=f"waiter {index} queued",
            )
        holders[0].release()
        threads[0].join(timeout=10)
        assert waiters[0].token is not None
        time.sleep(0.5)  # any event for the others would have arrived by now
        assert [c.events_received for c in clients] == [1, 0, 0, 0, 0]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        for waiter in waiters:
            waiter.release()
        for c in clients:
            c.close()


def _acquire_until(waiter: FairSemaphore, stop: threading.Event) -> None:
    with contextlib.suppress(AcquireCancelledError):
        waiter.acquire(timeout=30, cancel=stop)
