"""Losing the lock mid-operation is recorded in the unit's queue (issue 9, finding 5)."""

from __future__ import annotations

from etcd_helpers import operation, wait_until
from test_worker import events, finished

from rollingops.control import DomainControl
from rollingops.models import Outcome


def test_holder_force_released_mid_operation_ends_it_as_lock_lost(farm, client):
    farm.start("app/0", lease_ttl=6)
    farm.enqueue(client, "app/0", operation("stuck", results=[None]), operation("after"))
    wait_until(lambda: events(farm, "app/0", "hook-fired"), what="holder granted")
    control = DomainControl(client, farm.cluster.prefix, 1)
    (token,) = control.force_release("app/0")
    lost, after = finished(farm, client, "app/0", 2)
    assert (lost.id, lost.outcome, lost.token) == ("stuck", Outcome.LOCK_LOST, token)
    assert "lost" in lost.reason
    assert (after.id, after.outcome) == ("after", Outcome.DONE)
    assert after.token > token
    stuck_starts = [r for r in farm.records() if r["event"] == "start" and r["op"] == "stuck"]
    assert len(stuck_starts) == 1, "an operation that lost its lock is not run again"
