"""Fencing tokens keep increasing across backend switches: the domain's token floor (issue 9, 2).

After a fallback to the peer backend (which hands out tokens past etcd's), the leader raises the
floor to the highest token granted meanwhile; every etcd grant after that must exceed it.
"""

from __future__ import annotations

import threading

from etcd_helpers import operation, wait_until
from test_semaphore import semaphore
from test_worker import events, finished

from rollingops.control import DomainControl


def test_tokens_exceed_a_raised_floor_and_keep_increasing(farm, client):
    control = DomainControl(client, farm.cluster.prefix, 1)
    farm.start("app/0")
    farm.enqueue(client, "app/0", operation("a"))
    (a,) = finished(farm, client, "app/0", 1)
    peer_highest = a.token + 1000  # what the peer backend granted while etcd was away
    assert control.raise_token_floor(peer_highest) == peer_highest
    farm.enqueue(client, "app/0", operation("b"), operation("c", n=2))
    _, b, c = finished(farm, client, "app/0", 3)
    assert a.token < peer_highest < b.token < c.token
    starts = [r["token"] for r in farm.records() if r["event"] == "start"]
    assert starts == [a.token, b.token, c.token]


def test_floor_never_decreases(etcd, client):
    control = DomainControl(client, etcd.prefix, 1)
    assert control.token_floor() == 0
    assert control.raise_token_floor(100) == 100
    assert control.raise_token_floor(50) == 100
    assert control.raise_token_floor(100) == 100
    assert control.token_floor() == 100
    raised: list[int] = []
    threads = [
        threading.Thread(target=lambda v=v: raised.append(control.raise_token_floor(v)))
        for v in range(150, 350, 10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(raised) == len(threads)
    assert control.token_floor() == 340


def test_unreadable_floor_stops_grants_until_a_raise_replaces_it(etcd, client):
    control = DomainControl(client, etcd.prefix, 1)
    etcd.etcdctl("put", control.floor_key, "twenty-eight", check=True)
    pause = control.paused()
    assert pause is not None
    assert pause.reason.startswith("unreadable token floor: ")
    assert control.raise_token_floor(28) == 28
    assert control.paused() is None
    assert control.token_floor() == 28


def test_holder_waiting_out_a_pause_takes_a_token_above_a_floor_raised_meanwhile(farm, client):
    control = DomainControl(client, farm.cluster.prefix, 1)
    control.pause("fallback", by="leader")
    farm.start("app/0")
    farm.enqueue(client, "app/0", operation("a"))
    wait_until(lambda: events(farm, "app/0", "acquired"), what="app/0 holds, paused")
    floor = control.raise_token_floor(10_000)
    assert control.resume()
    (a,) = finished(farm, client, "app/0", 1)
    assert a.token > floor
    assert events(farm, "app/0", "token-floor-raised")


def test_a_key_created_before_a_raise_gets_no_token_under_the_new_floor(etcd, client):
    """k = 2: a holder that claims after a raise with its old key could repeat a token."""
    control = DomainControl(client, etcd.prefix, 2)
    first = semaphore(client, etcd, "app/0", capacity=2)
    second = semaphore(client, etcd, "app/1", capacity=2)
    r1, r2 = first.acquire(timeout=5), second.acquire(timeout=5)
    before = control.grant_state()
    assert before.token_for(r1) == r1
    assert before.token_for(r2) == r2  # the second holder claims first, with token r2
    control.raise_token_floor(r2 - r1)  # r2 - r1 + r1 would repeat r2
    after = control.grant_state()
    assert after.floor == r2 - r1
    assert after.token_for(r1) is None
    first.release()
    third = semaphore(client, etcd, "app/0", capacity=2)
    r3 = third.acquire(timeout=5)
    token = after.token_for(r3)
    assert token is not None
    assert token > r2
    assert token > after.floor
