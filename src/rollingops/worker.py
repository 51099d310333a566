"""The long-lived worker of one unit: waits for the lock, fires the hook, never polls.

Run as ``python -m rollingops.worker --config FILE``. The loop:

    idle (a watch on the unit's queue, no other etcd request)
    -> pending operation: lease, enter the semaphore, wait by watch
    -> unless the domain is paused (then: keep the slot, start nothing until resumed),
       claim the head operation with the fencing token (one transaction)
    -> fire the "lock granted" hook in this unit
    -> wait for the principal's result by watch
    -> apply it (one transaction): done, retry-release (requeue) or retry-hold (fire again)
    -> release at once, next operation with no sleep; revoke the lease when idle.

etcd unreachable for longer than ``failure_deadline`` -> fire the "etcd failed" hook, exit 3.
SIGTERM -> release the lock and revoke the lease, exit 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .control import DomainControl
from .etcd_client import EtcdClient, EtcdError
from .hook_runner import HookFailedError, HookRunner
from .lease import Lease, LeaseLostError
from .models import UnitQueue, utcnow
from .semaphore import AcquireCancelledError, FairSemaphore
from .store import CorruptQueueError, OperationStore, QueueSnapshot, QueueWatch, waiters_prefix
from .worker_config import WorkerConfig

EXIT_ETCD_FAILED = 3
_RETRY_PAUSE = 0.5
_HOOK_BACKOFF_MAX = 30.0
_SHUTDOWN_BOUND = 1.0
"""Seconds each release call may take when stopping (SIGTERM, upgrade, fallback)."""

logger = logging.getLogger("rollingops.worker")


def record(event: str, **fields: Any) -> None:
    """Write one structured event to the worker log."""
    logger.info(event, extra={"fields": fields})


class Worker:
    """Serves one unit's queue until stopped or until etcd is gone for too long."""

    def __init__(self, config: WorkerConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.client = EtcdClient(config.etcd)
        self.store = OperationStore(
            client=self.client, prefix=config.etcd.prefix, domain=config.domain, unit=config.unit
        )
        self.hooks = HookRunner(
            config.hook_runner, config.unit, config.charm_dir, config.hook_timeout
        )
        self._waiters = waiters_prefix(config.etcd.prefix, config.domain)
        self._control = DomainControl(
            self.client, config.etcd.prefix, config.domain, config.max_concurrent
        )
        self._lease: Lease | None = None
        self._semaphore: FairSemaphore | None = None
        self._watch: QueueWatch | None = None
        self._snapshot: QueueSnapshot | None = None
        self._etcd_down = False
        """The last etcd call failed: shutting down must not wait on a dead cluster."""

    def run(self) -> int:
        """Serve until stopped; return the process exit code."""
        record("started", pid=os.getpid(), domain=self.config.domain)
        unreachable_since: float | None = None
        try:
            while not self.stop.is_set():
                try:
                    self._step()
                    unreachable_since, self._etcd_down = None, False
                except EtcdError as error:  # unreachable, or refusing: both count to the deadline
                    self._etcd_down = True
                    unreachable_since = unreachable_since or time.monotonic()
                    down_for = time.monotonic() - unreachable_since
                    record("etcd-unreachable", error=str(error), seconds=round(down_for, 3))
                    if down_for >= self.config.failure_deadline:
                        return self._give_up(str(error))
                    self._forget_connection()
                    self.stop.wait(_RETRY_PAUSE)
                except CorruptQueueError as error:
                    record("queue-invalid", error=str(error))
                    self._snapshot = QueueSnapshot(UnitQueue(), -1, error.revision)
        finally:
            self._shutdown()
        return 0

    # -- one pass ---------------------------------------------------------------------------

    def _step(self) -> None:
        snapshot = self._current_snapshot()
        if not snapshot.queue.has_work:
            self._drop_lease()
            self._await_change(snapshot, timeout=None)
            return
        grant = snapshot.queue.current
        if grant is not None and grant.result is not None:
            self._finish(snapshot)
            return
        token = self._acquire()
        if token is None:
            return
        pause = self._control.wait_while_paused(self.stop)
        if pause is not None:
            record("pause-waited", reason=pause.reason, by=pause.by)
        if self.stop.is_set():
            return

        def change(queue: UnitQueue) -> UnitQueue:
            if grant is not None:
                return queue.regrant(token, utcnow())
            return queue.claim(token, utcnow())

        snapshot = self._write(change, snapshot)
        assert snapshot.queue.current is not None  # noqa: S101 - just written
        op = snapshot.queue.current.operation
        record("granted", op=op.id, callback=op.callback, attempt=op.attempt, token=token)
        self._fire(self.config.lock_granted_hook)

    def _finish(self, snapshot: QueueSnapshot) -> None:
        grant = snapshot.queue.current
        assert grant is not None  # noqa: S101 - checked by caller
        assert grant.result is not None  # noqa: S101 - checked by caller
        kept = False

        def apply(queue: UnitQueue) -> UnitQueue:
            nonlocal kept
            new, kept = queue.finish(utcnow())
            return new

        self._write(apply, snapshot)
        record(
            "result",
            op=grant.operation.id,
            result=grant.result.value,
            token=grant.token,
            attempt=grant.operation.attempt,
        )
        if kept and self._holding():
            record(
                "granted",
                op=grant.operation.id,
                callback=grant.operation.callback,
                attempt=grant.operation.attempt + 1,
                token=grant.token,
            )
            self._fire(self.config.lock_granted_hook)
            return
        self._release()

    # -- lock -------------------------------------------------------------------------------

    def _acquire(self) -> int | None:
        if self._lease is None or self._lease.lost.is_set():
            self._lease = Lease(self.client, self.config.lease_ttl, self._on_lease_lost)
            self._semaphore = FairSemaphore(
                self.client,
                self._waiters,
                self.config.max_concurrent,
                self._lease,
                self.config.unit,
            )
        assert self._semaphore is not None  # noqa: S101 - created with the lease
        if self._semaphore.is_held():
            return self._semaphore.token
        started = time.monotonic()
        record("waiting", lease=f"{self._lease.id:x}")
        try:
            token = self._semaphore.acquire(cancel=self.stop)
        except AcquireCancelledError:
            return None
        except LeaseLostError as error:
            record("lease-lost-while-waiting", error=str(error))
            return None
        record("acquired", token=token, waited=round(time.monotonic() - started, 6))
        return token

    def _holding(self) -> bool:
        return self._semaphore is not None and self._semaphore.is_held()

    def _release(self) -> None:
        if self._semaphore is not None and self._semaphore.token is not None:
            token = self._semaphore.token
            record("releasing", token=token)  # before the delete: the hold ends inside it
            self._semaphore.release()
            record("released", token=token)

    def _on_lease_lost(self, reason: str) -> None:
        holding = self._semaphore is not None and self._semaphore.token is not None
        record("lock-lost" if holding else "lease-lost", reason=reason)

    def _drop_lease(self) -> None:
        if self._lease is not None:
            lease, self._lease, self._semaphore = self._lease, None, None
            lease.revoke()
            record("idle")

    # -- queue ------------------------------------------------------------------------------

    def _current_snapshot(self) -> QueueSnapshot:
        if self._snapshot is None:
            self._snapshot = self.store.load()
        if self._watch is None:
            self._watch = self.store.watch(self._snapshot)
        return self._snapshot

    def _write(
        self, change: Callable[[UnitQueue], UnitQueue], known: QueueSnapshot
    ) -> QueueSnapshot:
        self._snapshot = self.store.update(change, known)
        return self._snapshot

    def _await_change(self, known: QueueSnapshot, timeout: float | None) -> None:
        assert self._watch is not None  # noqa: S101 - opened by _current_snapshot
        fresh = self._watch.next_change(known, timeout, self.stop)
        if fresh is not None:
            self._snapshot = fresh

    def _fire(self, hook: str) -> None:
        """Fire ``hook`` until it runs, then wait for the principal's result by watch."""
        backoff = 1.0
        while not self.stop.is_set():
            try:
                self.hooks.fire(hook, self.stop)
                record("hook-fired", hook=hook)
                break
            except HookFailedError as error:
                record("hook-failed", hook=hook, error=str(error))
                self.stop.wait(backoff)
                backoff = min(backoff * 2, _HOOK_BACKOFF_MAX)
        self._wait_for_result()

    def _wait_for_result(self) -> None:
        while not self.stop.is_set():
            snapshot = self._current_snapshot()
            grant = snapshot.queue.current
            if grant is None or grant.result is not None:
                return
            self._await_change(snapshot, timeout=None)

    # -- failure and shutdown ---------------------------------------------------------------

    def _forget_connection(self) -> None:
        """After an outage, start again from a fresh read and a fresh watch."""
        if self._watch is not None:
            self._watch.close()
        self._watch = None
        self._snapshot = None

    def _give_up(self, reason: str) -> int:
        record("etcd-failed", reason=reason, deadline=self.config.failure_deadline)
        try:
            self.hooks.fire(self.config.etcd_failed_hook, self.stop)
        except HookFailedError as error:
            record("hook-failed", hook=self.config.etcd_failed_hook, error=str(error))
        return EXIT_ETCD_FAILED

    def _shutdown(self) -> None:
        if self._watch is not None:
            self._watch.close()
        # Whatever etcd's state, stopping must be quick: the lease expires by itself anyway.
        self.client.settings = self.client.settings.model_copy(
            update={"total_timeout": _SHUTDOWN_BOUND, "call_timeout": _SHUTDOWN_BOUND / 2}
        )
        try:
            if self._etcd_down:
                record("shutdown-without-etcd")
            else:
                self._release()
                self._drop_lease()
        except Exception as error:  # the lease expires on its own anyway
            record("shutdown-incomplete", error=str(error))
        self.client.close()
        record("stopped")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, unit, event and the event's fields."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self._unit = unit

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        return json.dumps(
            {
                "ts": record.created,
                "unit": self._unit,
                "level": record.levelname,
                "event": record.getMessage(),
                **fields,
            }
        )


def configure_logging(config: WorkerConfig) -> None:
    """Send every log record of the engine to the unit's own log file, as JSON lines."""
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    handler = logging.FileHandler(config.log_file)
    handler.setFormatter(_JsonFormatter(config.unit))
    root = logging.getLogger("rollingops")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rollingops.worker``."""
    parser = argparse.ArgumentParser(prog="rollingops.worker")
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    config = WorkerConfig.load(args.config)
    configure_logging(config)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return Worker(config, stop).run()


if __name__ == "__main__":
    sys.exit(main())
