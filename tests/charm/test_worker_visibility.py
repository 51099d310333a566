"""Operators follow the worker without a shell: juju-log in each hook, and lock-status."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from charm_helpers import UNIT, peer, unit_dir
from ops import testing

from rollingops.etcd_client import EtcdSettings
from rollingops.worker import configure_logging, record
from rollingops.worker_config import WorkerConfig


@pytest.fixture
def worker_log(supervisor, tmp_path: Path) -> Iterator[None]:
    """The worker's own logging, writing where the charm reads (the unit's directory)."""
    state_dir = unit_dir(tmp_path)
    config = WorkerConfig(
        unit=UNIT,
        charm_dir=tmp_path,
        etcd=EtcdSettings(
            endpoints=["127.0.0.1:2379"],
            ca_file=state_dir / "etcd-ca.pem",
            cert_file=state_dir / "client.pem",
            key_file=state_dir / "client.key",
            prefix="/p/",
        ),
        state_dir=state_dir,
    )
    configure_logging(config)
    yield
    root = logging.getLogger("rollingops")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


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
