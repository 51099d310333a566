"""Operators follow the worker without a shell: juju-log in each hook, and lock-status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from charm_helpers import UNIT, peer, unit_dir
from ops import testing
from testbed.workers import worker_logging

from rollingops.worker import record


@pytest.fixture
def worker_log(supervisor, tmp_path: Path) -> Iterator[None]:
    """The worker's own logging, writing where the charm reads (the unit's directory)."""
    with worker_logging(UNIT, unit_dir(tmp_path)):
        yield


def relayed(ctx: testing.Context) -> list[str]:
    return [line.message for line in ctx.juju_log if line.message.startswith("worker: ")]


def test_each_hook_relays_what_the_worker_did_since_the_previous_one(ctx, worker_log):
    record("granted", op="op-1", callback="restart", attempt=1, token=7)
    record("released", token=7)
    out = ctx.run(ctx.on.update_status(), testing.State(relations={peer()}))
    first = relayed(ctx)
    assert [line.split(" ", 2)[2] for line in first] == [
        "granted op-1 (restart, attempt 1) with token 7",
        "released the lock (token 7)",
    ]
    assert first[0].split(" ")[1].endswith("Z"), "an ISO time"
    record("etcd-unreachable", error="refused", seconds=2.0)
    ctx.run(ctx.on.update_status(), out)
    assert [line.split(" ", 2)[2] for line in relayed(ctx)[len(first) :]] == [
        "etcd unreachable for 2.0 s: refused"
    ], "only what is new"


def test_lock_status_shows_the_last_worker_events(ctx, worker_log):
    record("sync-granted", holder="principal/0 stop", token=9)
    ctx.run(ctx.on.action("lock-status"), testing.State(relations={peer()}))
    events = ctx.action_results["worker-events"]
    assert list(events) == ["01"]
    assert events["01"].endswith("sync hold granted to principal/0 stop (token 9)")
