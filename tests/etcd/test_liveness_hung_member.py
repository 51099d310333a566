"""A hung etcd member (SIGSTOP: sockets open, nothing answered) must not stall its clients.

Issue 9: a waiter and an idle worker whose watch stream sat on a frozen follower waited out the
whole freeze. Only an unanswered HTTP/2 ping can tell a frozen member from a quiet one, so these
tests freeze the member a watch is on and require the stream to break, and the next call to go
to another member, long before the member comes back. The bound (20 s of a planned 40 s freeze)
proves "not stalled until the resume", not a latency target; the figures are printed (``-s``) and
noted in ``etcd_client.PING_TIMEOUT``'s docstring.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from etcd_helpers import WorkerFarm, operation, settings_for, wait_until
from test_worker import events, history
from testbed.etcd import EtcdCluster, EtcdMember

from rollingops.etcd_client import (
    KEEPALIVE_INTERVAL,
    EtcdClient,
    EtcdSettings,
    WatchBrokenError,
    WatchStream,
)
from rollingops.lease import Lease
from rollingops.semaphore import FairSemaphore
from rollingops.store import waiters_prefix

FREEZE = 40.0
"""How long the member is meant to stay frozen: every assertion must hold before that."""
NOTICED_WITHIN = 20.0
"""Generous bound on noticing the freeze (9 s by design: a keepalive interval plus a ping
timeout), so a busy CI machine does not fail it, while a stall until the resume still does."""


def follower(cluster: EtcdCluster) -> EtcdMember:
    """A member that does not lead: freezing it leaves the cluster fully able to serve."""
    leader = cluster.leader()
    return next(member for member in cluster.members if member is not leader)


def pinned(cluster: EtcdCluster, member: EtcdMember, **overrides: Any) -> EtcdSettings:
    """Settings whose first endpoint, where calls and watches start, is ``member``."""
    others = [endpoint for endpoint in cluster.endpoints if endpoint != member.endpoint]
    settings = settings_for(cluster, **overrides)
    return settings.model_copy(update={"endpoints": [member.endpoint, *others]})


def avoiding(cluster: EtcdCluster, member: EtcdMember) -> EtcdSettings:
    """Settings of a client that never talks to ``member`` (the test's own view of etcd)."""
    others = [endpoint for endpoint in cluster.endpoints if endpoint != member.endpoint]
    return settings_for(cluster).model_copy(update={"endpoints": others})


def seconds_until_broken(stream: WatchStream, since: float) -> float | None:
    """How long after ``since`` the stream reported itself broken; None: not during the freeze."""
    while time.monotonic() - since < FREEZE:
        try:
            stream.next(timeout=0.5)
        except WatchBrokenError:
            return time.monotonic() - since
    return None


@contextlib.contextmanager
def frozen(member: EtcdMember) -> Iterator[float]:
    """SIGSTOP ``member``; yield when it stopped; always resume it."""
    member.pause()
    try:
        yield time.monotonic()
    finally:
        member.resume()


def test_a_watch_on_a_frozen_member_breaks_and_the_next_call_goes_elsewhere(
    etcd_cluster: EtcdCluster,
) -> None:
    member = follower(etcd_cluster)
    key = etcd_cluster.prefix + "watched"
    with EtcdClient(pinned(etcd_cluster, member)) as client:
        assert client.endpoint == member.endpoint
        stream = client.watch([key])
        stream.wait_created(5)
        # Idle past two keepalive intervals first: grpc's default stops pinging after two pings
        # without data, and etcd must not take our pings for abuse (GOAWAY) on a healthy stream.
        idle_until = time.monotonic() + 2 * KEEPALIVE_INTERVAL + 1
        while time.monotonic() < idle_until:
            assert stream.next(timeout=0.5) is None
        with frozen(member) as since:
            noticed = seconds_until_broken(stream, since)
            assert noticed is not None, f"watch still open {FREEZE:.0f}s into the freeze"
            print(f"watch broke {noticed:.2f}s into the freeze")
            assert noticed < NOTICED_WITHIN, f"watch broke only after {noticed:.1f}s"
            assert client.endpoint != member.endpoint
            client.put(key, b"after the freeze")
            value, _ = client.get(key)
            assert value is not None
            assert value.value == b"after the freeze"
            assert time.monotonic() - since < FREEZE
        stream.close()


def test_a_watch_that_a_frozen_member_never_acknowledges_moves_the_client_away(
    etcd_cluster: EtcdCluster,
) -> None:
    """The semaphore waits for its watch to be created before it reads; on a hung member that
    wait runs out, and the next watch and call must not go back to the same member."""
    member = follower(etcd_cluster)
    key = etcd_cluster.prefix + "watched"
    with frozen(member), EtcdClient(pinned(etcd_cluster, member)) as client:
        stream = client.watch([key])
        with pytest.raises(WatchBrokenError):
            stream.wait_created(2)
        assert client.endpoint != member.endpoint
        with client.watch([key]) as again:
            again.wait_created(5)
        client.put(key, b"v")


def test_an_idle_worker_on_a_frozen_member_serves_an_operation_queued_meanwhile(
    etcd_cluster: EtcdCluster, cluster_farm: WorkerFarm
) -> None:
    member = follower(etcd_cluster)
    cluster_farm.start("app/0", etcd=pinned(etcd_cluster, member))
    with EtcdClient(avoiding(etcd_cluster, member)) as client:
        cluster_farm.enqueue(client, "app/0", operation("before"))
        wait_until(lambda: events(cluster_farm, "app/0", "idle"), what="worker idle again")
        with frozen(member) as since:
            cluster_farm.enqueue(client, "app/0", operation("during"))
            done = wait_until(
                lambda: len(history(cluster_farm, client, "app/0")) >= 2,
                timeout=NOTICED_WITHIN,
                what="operation queued during the freeze finished",
            )
            assert done
            print(f"served {time.monotonic() - since:.2f}s into the freeze")
        assert [entry.id for entry in history(cluster_farm, client, "app/0")] == [
            "before",
            "during",
        ]


def test_a_waiter_on_a_frozen_member_gets_the_lock_when_the_holder_releases(
    etcd_cluster: EtcdCluster,
) -> None:
    member = follower(etcd_cluster)
    waiters = waiters_prefix(etcd_cluster.prefix)
    with (
        EtcdClient(avoiding(etcd_cluster, member)) as holder_client,
        EtcdClient(pinned(etcd_cluster, member)) as waiter_client,
    ):
        holder = FairSemaphore(holder_client, waiters, 1, Lease(holder_client, 10), "holder")
        holder.acquire(timeout=5)
        waiter = FairSemaphore(waiter_client, waiters, 1, Lease(waiter_client, 10), "waiter")
        tokens: list[int] = []
        thread = threading.Thread(
            target=lambda: tokens.append(waiter.acquire(timeout=FREEZE + 20)), daemon=True
        )
        thread.start()
        # The waiter reads the queue again once etcd has acknowledged its watch: from then on
        # it is a waiter like one that has waited for an hour.
        wait_until(lambda: waiter_client.requests["txn"] >= 2, what="waiter watching")
        with frozen(member) as since:
            holder.release()
            thread.join(timeout=NOTICED_WITHIN)
            waited = time.monotonic() - since
            assert not thread.is_alive(), "waiter still waiting on its frozen member"
            print(f"acquired {waited:.2f}s into the freeze")
        assert len(tokens) == 1
