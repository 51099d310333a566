"""``RollingOps.sync_lock`` in a principal's ``stop`` hook (ops.testing) against a real worker.

The subordinate's bag is what the real charm publishes (``subordinate_bag``), for the backend
the case needs; the socket in it is served by a real worker process on real etcd.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import ops
import pytest
from etcd_helpers import WorkerFarm, operation, wait_until
from ops import testing
from rollingops_charm.principal import subordinate_bag
from rollingops_charm.unit_record import UnitRecord
from rollingops_principal import (
    RollingOps,
    SyncLockError,
    SyncLockNoRelationError,
    SyncLockTimeoutError,
    SyncLockUnavailableError,
)

from rollingops.backend_choice import Backend
from rollingops.control import DomainControl

META = {
    "name": "principal",
    "provides": {"rollingops": {"interface": "rollingops", "scope": "container"}},
}


class Principal(ops.CharmBase):
    """Leaves its cluster in ``stop`` while holding the lock, as a scale-down would."""

    outcomes: ClassVar[list[Any]] = []
    timeout: ClassVar[float] = 30.0
    during: ClassVar[Any] = None

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.rolling = RollingOps(self)
        framework.observe(self.on.stop, self._on_stop)

    def _on_stop(self, _: ops.StopEvent) -> None:
        try:
            with self.rolling.sync_lock(timeout=Principal.timeout) as grant:
                begun = time.time()
                if Principal.during is not None:
                    Principal.during()
                Principal.outcomes.append(("held", grant.token, begun, time.time()))
        except SyncLockError as error:
            Principal.outcomes.append((type(error), str(error)))


@pytest.fixture(autouse=True)
def fresh() -> None:
    Principal.outcomes = []
    Principal.timeout = 30.0
    Principal.during = None


def stop_with(bag: dict[str, str] | None) -> list[Any]:
    relations = []
    if bag is not None:
        relations.append(
            testing.SubordinateRelation(
                "rollingops", remote_app_name="rollingops", remote_unit_data=bag
            )
        )
    context = testing.Context(Principal, meta=META)
    context.run(context.on.stop(), testing.State(relations=relations))
    return Principal.outcomes


def published(backend: Backend | None, socket: Path | None) -> dict[str, str]:
    """The bag the real charm writes for an idle unit under ``backend``."""
    return subordinate_bag(UnitRecord(), backend, socket).to_databag()


def serving(farm: WorkerFarm, unit: str) -> Path:
    farm.start(unit)
    path = farm.config(unit).sync_socket
    wait_until(path.is_socket, what=f"{unit}'s sync socket")
    return path


def started(farm: WorkerFarm, op: str) -> float | None:
    return next((r["ts"] for r in farm.records() if r["event"] == "start" and r["op"] == op), None)


def test_stop_hook_holds_the_lock_and_the_async_op_waits_for_it(farm, client):
    socket = serving(farm, "rollingops/0")
    serving(farm, "rollingops/1")

    def meanwhile() -> None:
        farm.enqueue(client, "rollingops/1", operation("restart-1"))
        wait_until(
            lambda: len(DomainControl(client, farm.cluster.prefix, 1).contenders()) == 2,
            what="the async op queued behind the hold",
        )
        time.sleep(0.5)
        assert started(farm, "restart-1") is None

    Principal.during = meanwhile
    ((kind, token, _, released),) = stop_with(published(Backend.ETCD, socket))
    assert kind == "held"
    assert token > 0
    begun = wait_until(lambda: started(farm, "restart-1"), what="the async op after the hold")
    assert begun >= released
    (start,) = [r for r in farm.records() if r["event"] == "start"]
    assert start["token"] > token


def test_timeout_raises_the_timeout_error(farm, client):
    socket = serving(farm, "rollingops/0")
    serving(farm, "rollingops/1")
    farm.enqueue(client, "rollingops/1", operation("long", hold=3))
    wait_until(lambda: started(farm, "long"), what="an async holder")
    Principal.timeout = 0.5
    ((kind, message),) = stop_with(published(Backend.ETCD, socket))
    assert kind is SyncLockTimeoutError
    assert "0.5 s" in message


def test_peer_backend_fails_at_once_with_the_reason(farm):
    socket = serving(farm, "rollingops/0")
    begun = time.monotonic()
    ((kind, message),) = stop_with(published(Backend.PEER, socket))
    assert kind is SyncLockUnavailableError
    assert "peer backend" in message
    assert time.monotonic() - begun < 5


def test_etcd_not_ready_fails_at_once_with_the_subordinates_message():
    ((kind, message),) = stop_with(published(None, None))
    assert kind is SyncLockUnavailableError
    assert "only while etcd grants" in message
    assert "no usable etcd" in message


def test_no_relation_is_its_own_error():
    ((kind, _),) = stop_with(None)
    assert kind is SyncLockNoRelationError


def test_a_published_socket_with_no_worker_behind_it_is_unavailable(tmp_path):
    ((kind, message),) = stop_with(published(Backend.ETCD, tmp_path / "sync.sock"))
    assert kind is SyncLockUnavailableError
    assert "no rollingops worker answers" in message
