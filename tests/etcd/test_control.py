"""Pause, resume and force-release of a domain, with real worker processes on real etcd."""

from __future__ import annotations

import time

import pytest
from etcd_helpers import operation, wait_until
from test_worker import events, finished

from rollingops.control import DomainControl


def test_paused_domain_grants_nothing_until_resumed(farm, client):
    control = DomainControl(client, farm.cluster.prefix, 1)
    control.pause("maintenance", by="operator")
    farm.start("app/0")
    farm.enqueue(client, "app/0", operation("a"))
    wait_until(lambda: events(farm, "app/0", "acquired"), what="slot taken")
    time.sleep(1.0)
    assert not [r for r in farm.records() if r["event"] == "hook"]
    assert farm.store(client, "app/0").load().queue.current is None
    assert control.resume()
    (entry,) = finished(farm, client, "app/0", 1)
    assert entry.id == "a"
    (waited,) = events(farm, "app/0", "pause-waited")
    assert (waited["reason"], waited["by"]) == ("maintenance", "operator")


def test_force_release_hands_the_lock_on_and_the_holder_learns_it(farm, client):
    farm.start("app/0", lease_ttl=6)
    farm.enqueue(client, "app/0", operation("stuck", results=[None]))
    wait_until(lambda: events(farm, "app/0", "hook-fired"), what="holder granted")
    farm.start("app/1", lease_ttl=6)
    farm.enqueue(client, "app/1", operation("next"))
    wait_until(lambda: events(farm, "app/1", "waiting"), what="second waiting")
    control = DomainControl(client, farm.cluster.prefix, 1)
    (token,) = control.force_release("app/0")
    (entry,) = finished(farm, client, "app/1", 1)
    assert entry.token > token
    wait_until(lambda: events(farm, "app/0", "lock-lost"), what="holder told")
    assert control.position("app/1") is None


def test_position_counts_waiters_only(etcd, client):
    control = DomainControl(client, etcd.prefix, 1)
    assert control.position("app/0") is None


@pytest.mark.parametrize(
    "written",
    [
        '{"reason": "x", "by": "y", "since": "2024-01-01T00:00:00Z", "until": "never"}',
        '{"reason": "x", "by"',
    ],
    ids=["unknown-field", "invalid-json"],
)
def test_unreadable_pause_key_pauses_the_domain_and_crashes_nobody(farm, client, written):
    control = DomainControl(client, farm.cluster.prefix, 1)
    farm.cluster.etcdctl("put", control.paused_key, written, check=True)  # by hand, as root
    worker = farm.start("app/0")
    farm.enqueue(client, "app/0", operation("a"))
    wait_until(lambda: events(farm, "app/0", "paused"), what="worker sees the pause")
    time.sleep(1.0)
    assert worker.poll() is None, "the worker must not crash on a bad pause key"
    assert not [r for r in farm.records() if r["event"] == "hook"]
    pause = control.paused()
    assert pause is not None
    assert pause.reason.startswith("unreadable pause key: ")
    (paused,) = events(farm, "app/0", "paused")
    assert paused["reason"] == pause.reason
    assert control.resume()
    (entry,) = finished(farm, client, "app/0", 1)
    assert entry.id == "a"
    assert control.paused() is None
