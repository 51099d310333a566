"""The queue-changed hook: a unit is told when its running operation ends without its result.

The worker's own verdicts (``hook-failed``, ``lock-lost``) and ends written by someone else
(the operator's ``cancel``, ``force-release`` marking it ``revoked``) run no other hook in the
unit, so without this one the charm would go on saying it holds the lock. The normal path
(grant, result, finish) must still cost exactly one hook per grant: lock-granted.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from etcd_helpers import WorkerFarm, operation, wait_until
from test_worker import events, finished

from rollingops.control import DomainControl
from rollingops.etcd_client import EtcdClient
from rollingops.models import Outcome, utcnow
from rollingops.store import OperationStore

LOCK_GRANTED = "rollingops-lock-granted"
QUEUE_CHANGED = "rollingops-queue-changed"
SETTLE = 1.0
"""Seconds given to a second, wrong, queue-changed hook to show up after the first one."""


def hooks(farm: WorkerFarm, unit: str) -> list[str]:
    return [r["hook"] for r in farm.records() if r["event"] == "hook" and r["unit"] == unit]


def told(farm: WorkerFarm, unit: str) -> dict[str, Any]:
    """What the fake charm read in its queue-changed hook, once nothing more should come."""
    (read,) = wait_until(
        lambda: [r for r in farm.records() if r["event"] == "queue-read" and r["unit"] == unit],
        what=f"{unit} told its queue changed",
    )
    time.sleep(SETTLE)
    return read


def started(farm: WorkerFarm, op: str) -> list[dict[str, Any]]:
    return [r for r in farm.records() if r["event"] == "start" and r["op"] == op]


def cancel(farm: WorkerFarm, client: EtcdClient, unit: str, op: str) -> None:
    farm.store(client, unit).update(lambda q: q.cancel(op, "operator", utcnow()))


def test_force_released_operation_ends_revoked_and_its_unit_is_told_once(farm, client):
    worker = farm.start("app/0", lease_ttl=30)
    farm.enqueue(client, "app/0", operation("stuck", results=[None]), operation("after"))
    wait_until(lambda: events(farm, "app/0", "hook-fired"), what="stuck granted")
    control = DomainControl(client, farm.cluster.prefix, 1)
    # A stuck worker: it cannot see its lease revoked and write lock-lost before the mark.
    worker.send_signal(signal.SIGSTOP)
    try:
        (token,) = control.force_release("app/0")
        assert control.revoke_running("app/0", [token], "stuck for an hour") == "stuck"
    finally:
        worker.send_signal(signal.SIGCONT)
    revoked, after = finished(farm, client, "app/0", 2)
    assert (revoked.id, revoked.outcome, revoked.token) == ("stuck", Outcome.REVOKED, token)
    assert revoked.reason == "stuck for an hour"
    assert (after.id, after.outcome) == ("after", Outcome.DONE)
    assert after.token > token
    read = told(farm, "app/0")
    assert read["last"] == ["stuck", "revoked"]
    assert hooks(farm, "app/0") == [LOCK_GRANTED, QUEUE_CHANGED, LOCK_GRANTED]
    (event,) = events(farm, "app/0", "queue-changed")
    assert event["op"] == "stuck"
    assert len(started(farm, "stuck")) == 1, "a revoked operation is not run again"


def test_revoke_running_ends_only_the_operation_running_under_a_released_token(client, etcd):
    control = DomainControl(client, etcd.prefix, 1)
    store = OperationStore(client, etcd.prefix, "app/0")
    store.update(lambda q: q.enqueue(operation("a")))
    assert control.revoke_running("app/0", [7], "nothing runs") is None
    store.update(lambda q: q.claim(7, utcnow()))
    assert control.revoke_running("app/0", [6, 8], "another lock") is None
    assert store.load().queue.current is not None
    assert control.revoke_running("app/0", [7], "operator") == "a"
    (entry,) = store.load().queue.history
    assert (entry.id, entry.outcome, entry.token, entry.reason) == (
        "a",
        Outcome.REVOKED,
        7,
        "operator",
    )
    assert control.revoke_running("app/0", [7], "again") is None, "ended already: left alone"
    assert len(store.load().queue.history) == 1


def test_hook_failed_tells_the_unit_once(farm, client):
    farm.start("app/0", hook_attempts=2)
    farm.enqueue(client, "app/0", operation("doomed", hook_fails=True))
    (dropped,) = finished(farm, client, "app/0", 1)
    assert (dropped.id, dropped.outcome) == ("doomed", Outcome.HOOK_FAILED)
    read = told(farm, "app/0")
    assert (read["current"], read["last"]) == (None, ["doomed", "hook-failed"])
    assert hooks(farm, "app/0") == [LOCK_GRANTED, LOCK_GRANTED, QUEUE_CHANGED]
    (event,) = events(farm, "app/0", "queue-changed")
    assert (event["op"], event["why"]) == ("doomed", "hook-failed")


def test_normal_operations_fire_lock_granted_only(farm, client):
    farm.start("app/0")
    farm.enqueue(
        client,
        "app/0",
        operation("a"),
        operation("b", results=["retry-hold", "release"]),
        operation("c", results=["retry-release", "release"]),
    )
    assert [e.outcome for e in finished(farm, client, "app/0", 3)] == [Outcome.DONE] * 3
    grants = len([r for r in farm.records() if r["event"] == "start"])
    assert grants == 5
    # Then one that does end without its result: the recorder would have seen any other.
    farm.enqueue(client, "app/0", operation("stuck", results=[None]))
    wait_until(lambda: started(farm, "stuck"), what="stuck running")
    cancel(farm, client, "app/0", "stuck")
    told(farm, "app/0")
    assert hooks(farm, "app/0") == [LOCK_GRANTED] * grants + [LOCK_GRANTED, QUEUE_CHANGED]


def test_cancelling_the_running_operation_tells_its_unit_once(farm, client):
    farm.start("app/0")
    farm.enqueue(client, "app/0", operation("stuck", results=[None]))
    wait_until(lambda: started(farm, "stuck"), what="stuck running")
    cancel(farm, client, "app/0", "stuck")
    read = told(farm, "app/0")
    assert (read["current"], read["last"]) == (None, ["stuck", "cancelled"])
    assert hooks(farm, "app/0") == [LOCK_GRANTED, QUEUE_CHANGED]
    (event,) = events(farm, "app/0", "queue-changed")
    assert (event["op"], event["why"]) == ("stuck", "operation-gone")


def test_cancelling_between_failed_hook_attempts_tells_the_unit_once(farm, client):
    farm.start("app/0", hook_attempts=3)  # waits 1 s, then 2 s, between attempts
    farm.enqueue(client, "app/0", operation("doomed", hook_fails=True))
    wait_until(lambda: events(farm, "app/0", "hook-failed"), what="first attempt failed")
    cancel(farm, client, "app/0", "doomed")
    read = told(farm, "app/0")
    assert read["last"] == ["doomed", "cancelled"]
    fired = hooks(farm, "app/0")
    assert fired[-1] == QUEUE_CHANGED
    assert fired.count(QUEUE_CHANGED) == 1
    assert events(farm, "app/0", "operation-gone")
