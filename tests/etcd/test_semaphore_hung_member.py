"""A waiter whose etcd member hangs just as it opens its watch keeps its place in the queue.

The hang has to land between the read that makes a contender a waiter and the watch it opens
next. Freezing the waiter's member before ``acquire`` does not get there: the enter transaction
times out on the frozen member and fails over, and the watch then goes to the healthy member that
answered. What does get there, deterministically: a waiter already watching on member A, whose
next endpoint is member B. B is frozen, then A is killed. A's stream breaks at once (connection
closed), the client fails over to B and the waiter opens its new watch on B, which is never
acknowledged. A is restarted at once, so A and the third member keep a quorum for the rest.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from etcd_helpers import settings_for, wait_until
from testbed.etcd import EtcdCluster, EtcdMember

from rollingops.etcd_client import EtcdClient, EtcdSettings
from rollingops.lease import Lease
from rollingops.semaphore import FairSemaphore
from rollingops.store import waiters_prefix

pytestmark = pytest.mark.cluster

TTL = 30
"""Long enough that no lease runs out while a member is down or frozen."""


def ordered(cluster: EtcdCluster, members: list[EtcdMember]) -> EtcdSettings:
    """Settings that try ``members`` in this order (calls and watches start at the first)."""
    return settings_for(cluster).model_copy(
        update={"endpoints": [member.endpoint for member in members]}
    )


@dataclass
class Waiter:
    """``acquire`` running in a thread, and how it ended."""

    semaphore: FairSemaphore
    timeout: float
    tokens: list[int] = field(default_factory=list[int])
    errors: list[Exception] = field(default_factory=list[Exception])
    ended_at: float = 0.0
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.tokens.append(self.semaphore.acquire(timeout=self.timeout))
        except Exception as error:  # the test reports it
            self.errors.append(error)
        self.ended_at = time.monotonic()


@dataclass
class HungWatchBed:
    """A holder holding, a waiter watching on ``watched``, ``hung`` next on its list."""

    cluster: EtcdCluster
    watched: EtcdMember
    hung: EtcdMember
    steady: EtcdMember
    """The leader: the holder, the leases and the test's own reads talk to it (and ``watched``)."""
    observer: EtcdClient
    waiter_client: EtcdClient
    holder: FairSemaphore
    waiter: FairSemaphore

    def start_waiter(self, timeout: float) -> Waiter:
        waiter = Waiter(self.waiter, timeout)
        # The waiter has read the queue again after etcd acknowledged its first watch: its
        # entry and that read (which rewrites its key, see semaphore) are one transaction each.
        wait_until(lambda: self.waiter_client.requests["txn"] >= 2, what="waiter watching")
        assert self.waiter_client.endpoint == self.watched.endpoint
        return waiter

    def created_revision(self) -> int | None:
        kv, _ = self.observer.get(self.waiter.key)
        return None if kv is None else kv.create_revision

    @contextlib.contextmanager
    def hang_on_next_watch(self) -> Iterator[float]:
        """Freeze ``hung``, kill ``watched``; yield when; restart and resume both after."""
        self.hung.pause()
        try:
            self.watched.kill()
            since = time.monotonic()
            self.watched.restart()  # with the leader: a quorum while ``hung`` stays frozen
            yield since
        finally:
            self.hung.resume()


@pytest.fixture
def bed(etcd_cluster: EtcdCluster) -> Iterator[HungWatchBed]:
    steady = etcd_cluster.leader()
    watched, hung = (member for member in etcd_cluster.members if member is not steady)
    waiters = waiters_prefix(etcd_cluster.prefix)
    with (
        EtcdClient(ordered(etcd_cluster, [steady, watched])) as observer,
        EtcdClient(ordered(etcd_cluster, [watched, hung, steady])) as waiter_client,
    ):
        # Both leases on the observer: the waiter's client must move between members only
        # because of its own watches, so that its next watch goes to ``hung``.
        holder = FairSemaphore(observer, waiters, 1, Lease(observer, TTL), "holder")
        holder.acquire(timeout=5)
        waiter = FairSemaphore(waiter_client, waiters, 1, Lease(observer, TTL), "waiter")
        yield HungWatchBed(
            etcd_cluster, watched, hung, steady, observer, waiter_client, holder, waiter
        )


def test_a_waiter_whose_watch_is_never_acknowledged_keeps_its_place_and_gets_the_lock(
    bed: HungWatchBed,
) -> None:
    waiter = bed.start_waiter(timeout=120)
    place = bed.created_revision()
    assert place is not None
    with bed.hang_on_next_watch():
        # Watch 1 was on ``watched``, watch 2 on ``hung`` (never acknowledged); a third one,
        # on the leader, means the wait was set up again.
        wait_until(
            lambda: not waiter.thread.is_alive() or bed.waiter_client.requests["watch"] >= 3,
            timeout=60,
            what="the waiter watching again after the hung watch",
        )
        assert waiter.errors == [], "acquire gave up its place on a hung watch"
        assert bed.created_revision() == place, "the waiter lost its place in the queue"
    assert bed.waiter_client.endpoint == bed.steady.endpoint
    bed.holder.release()
    waiter.thread.join(timeout=30)
    assert not waiter.thread.is_alive(), "the waiter did not get the lock after the release"
    assert waiter.errors == []
    kv, _ = bed.observer.get(bed.waiter.key)
    assert kv is not None
    assert kv.create_revision == place, "the same key, never given up"
    assert waiter.tokens == [kv.mod_revision], "the token is the revision it learnt it holds at"
    assert bed.waiter.still_held()


def test_a_waiter_whose_watch_hangs_past_its_timeout_times_out_on_time(
    bed: HungWatchBed,
) -> None:
    """The overall timeout still rules: a hung watch is not an error of its own, and the wait
    for its acknowledgement ends with the deadline, not a whole call bound later."""
    timeout = 4.0
    started = time.monotonic()
    waiter = bed.start_waiter(timeout=timeout)
    with bed.hang_on_next_watch():
        waiter.thread.join(timeout=30)
        assert not waiter.thread.is_alive()
    assert [type(error) for error in waiter.errors] == [TimeoutError], waiter.errors
    overshoot = waiter.ended_at - (started + timeout)
    # Giving the key up (one delete) may wait for the cluster to settle after the restart.
    assert overshoot < 2.0, f"timed out {overshoot:.2f}s after the deadline"
