"""The etcd client on real etcd: its prefix, RBAC, bounded failures, transactions, watches."""

from __future__ import annotations

import time

import pytest
from etcd_helpers import operation, settings_for
from test_worker import HOSTILE_KWARGS

from rollingops.etcd_client import (
    MIN_ATTEMPT_TIMEOUT,
    Compare,
    EtcdClient,
    EtcdPermissionError,
    EtcdUnavailableError,
    EventKind,
    Op,
    OutsidePrefixError,
    attempt_timeout,
)
from rollingops.store import OperationStore


@pytest.mark.parametrize("key", ["/elsewhere", "/rollingops/", "relative"])
def test_keys_outside_the_prefix_are_refused_before_anything_is_sent(client, key):
    for call in (client.get, client.delete, lambda k: client.put(k, b"x")):
        with pytest.raises(OutsidePrefixError):
            call(key)
    with pytest.raises(OutsidePrefixError):
        client.txn([Compare.missing(client.prefix + "a")], [Op.put(key, b"x")])
    with pytest.raises(OutsidePrefixError):
        client.watch([key])
    assert sum(client.requests.values()) == 0


def test_etcd_rbac_denies_the_client_outside_its_prefix(etcd):
    unconfined = settings_for(etcd).model_copy(update={"prefix": "/"})
    with EtcdClient(unconfined) as client:
        with pytest.raises(EtcdPermissionError):
            client.put("/other-application/key", b"x")
        with pytest.raises(EtcdPermissionError):
            client.get("/other-application/key")
        client.put(etcd.prefix + "mine", b"ok")


def test_every_call_fails_within_its_bound_when_etcd_is_frozen(etcd):
    bound = 1.5
    with EtcdClient(settings_for(etcd, total_timeout=bound, call_timeout=0.5)) as client:
        client.put(etcd.prefix + "k", b"v")
        etcd.members[0].pause()
        try:
            for call in (
                lambda: client.get(etcd.prefix + "k"),
                lambda: client.put(etcd.prefix + "k", b"w"),
                lambda: client.grant_lease(5),
            ):
                started = time.monotonic()
                with pytest.raises(EtcdUnavailableError):
                    call()
                assert time.monotonic() - started < bound + 1.0
        finally:
            etcd.members[0].resume()


@pytest.mark.parametrize(
    ("remaining", "untried", "expected"),
    [
        (2.0, 3, 2.0 / 3),  # a hook's 2 s over 3 endpoints: a hung first one takes a third
        (1.28, 2, 0.64),  # what is left, over the two not yet asked
        (1.28, 1, 1.28),  # every endpoint asked: the rest of the budget
        (5.0, 1, 2.0),  # never more than call_timeout
        (0.6, 3, MIN_ATTEMPT_TIMEOUT),  # a share too small to answer in is raised to the floor
        (0.1, 3, 0.1),  # but never past the call's own bound
    ],
)
def test_an_attempt_gets_its_share_of_the_budget_left(remaining, untried, expected):
    assert attempt_timeout(2.0, remaining, untried) == pytest.approx(expected)


def test_transaction_compare_and_swap(client):
    key = client.prefix + "cas"
    assert client.txn([Compare.missing(key)], [Op.put(key, b"1")]).succeeded
    second = client.txn([Compare.missing(key)], [Op.put(key, b"2")], [Op.get(key)])
    assert not second.succeeded
    assert second.ranges[0][0].value == b"1"


def test_watch_from_a_revision_sees_what_happened_after_the_read(client):
    key = client.prefix + "w"
    _, revision = client.get(key)
    client.put(key, b"a")
    client.delete(key)
    with client.watch([key], start_revision=revision + 1) as stream:
        seen = []
        while len(seen) < 2:
            seen += stream.next(timeout=5) or []
    assert [(e.kind, e.value) for e in seen] == [(EventKind.PUT, b"a"), (EventKind.DELETE, b"")]


def test_hostile_kwargs_round_trip_through_etcd_exactly(client):
    store = OperationStore(client, client.prefix, "app/0")
    store.update(lambda q: q.enqueue(operation("a", **HOSTILE_KWARGS)))
    assert store.load().queue.pending[0].kwargs == HOSTILE_KWARGS
