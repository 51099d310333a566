"""The operator's ``cancel`` on a real worker: a stuck running operation gives the lock back."""

from __future__ import annotations

from etcd_helpers import wait_until
from testbed.workers import operation

from rollingops.models import Outcome, utcnow


def test_cancelling_a_stuck_operation_frees_the_lock_for_the_next_unit(farm, client):
    farm.start("app/0")
    farm.start("app/1")
    farm.enqueue(client, "app/0", operation("stuck", results=[None]))  # never reports
    wait_until(
        lambda: farm.store(client, "app/0").load().queue.current is not None,
        timeout=30,
        what="app/0 running its stuck operation",
    )
    farm.enqueue(client, "app/1", operation("next"))
    farm.store(client, "app/0").update(lambda q: q.cancel("stuck", "operator", utcnow()))
    done = wait_until(
        lambda: farm.store(client, "app/1").load().queue.history,
        timeout=30,
        what="app/1's operation done after the cancel",
    )
    assert [(e.id, e.outcome) for e in done] == [("next", Outcome.DONE)]
    stuck = farm.store(client, "app/0").load().queue.history
    assert [(e.id, e.outcome) for e in stuck] == [("stuck", Outcome.CANCELLED)]
