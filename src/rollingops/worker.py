"""The long-lived worker of one unit: waits for the lock, fires the hook, never polls.

Run as ``python -m rollingops.worker --config FILE``. The loop:

    idle (a watch on the unit's queue, no other etcd request)
    -> pending operation: lease, enter the semaphore, wait by watch
    -> unless the domain is paused (then: keep the slot, start nothing until resumed),
       claim the head operation with the fencing token (one transaction, which also proves
       that our waiter key is still ours, the domain unpaused and the token floor unchanged)
    -> fire the "lock granted" hook in this unit (at most ``hook_attempts`` times)
    -> wait for the principal's result by watch
    -> apply it (one transaction): done, retry-release (requeue) or retry-hold (fire again)
    -> release at once, next operation with no sleep; revoke the lease when idle.

The lock lost before the claim: nothing starts, the operation waits for the lock again. The lock
lost while the operation runs: it ends as ``lock-lost`` in the unit's history, never run again.
The hook never fired: the operation ends as ``hook-failed`` and the lock goes to the next unit.
The running operation ended other than by its result (those two verdicts, or someone else's:
the operator's ``cancel``, a ``force-release``) -> fire the "queue changed" hook once, so that
the charm reads its queue again. A normal operation costs one hook, "lock granted", no more.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import etcd_versions
from .control import DomainControl, GrantState, Pause
from .etcd_client import EtcdClient, EtcdError
from .hook_runner import HookFailedError, HookRunner
from .lease import Lease, LeaseLostError
from .models import Claim, Outcome, UnitQueue, utcnow
from .semaphore import AcquireCancelledError, FairSemaphore
from .store import (
    ConditionFailedError,
    CorruptQueueError,
    OperationStore,
    QueueSnapshot,
    QueueWatch,
    waiters_prefix,
)
from .sync_server import SyncServer
from .worker_config import WorkerConfig
from .worker_log import describe, iso

EXIT_ETCD_FAILED = 3
EXIT_BAD_CONFIG = 2
_RETRY_PAUSE = 0.5
_HOOK_BACKOFF_FIRST = 1.0
_HOOK_BACKOFF_MAX = 30.0
"""Between the due times of two attempts of the lock-granted hook: 1 s, doubling, at most 30 s."""
_WAKE_INTERVAL = 0.2
"""How often a worker waiting for a result looks at its own lease (a local check, no request)."""
_SHUTDOWN_BOUND = 1.0
"""Seconds each release call may take when stopping (SIGTERM, upgrade, fallback)."""

logger = logging.getLogger("rollingops.worker")


def hook_attempt_starts(attempts: int) -> list[float]:
    """Seconds after the first attempt of the lock-granted hook at which each attempt is due.

    Counted between starts, not from the end of the attempt before, so the last one is due at
    the sum of the backoffs whatever the hook's own run time (5 attempts: 0, 1, 3, 7, 15 s).
    """
    starts, backoff = [0.0], _HOOK_BACKOFF_FIRST
    for _ in range(attempts - 1):
        starts.append(starts[-1] + backoff)
        backoff = min(backoff * 2, _HOOK_BACKOFF_MAX)
    return starts


def record(event: str, **fields: Any) -> None:
    """Write one structured event to the worker log."""
    logger.info(event, extra={"fields": fields})


@dataclass(frozen=True)
class _LostGrant:
    """A running operation whose lock went, until its ``lock-lost`` end is written."""

    op: str
    token: int
    reason: str

    def matches(self, grant: Claim) -> bool:
        """Whether ``grant`` is that operation under that same lock."""
        return (grant.operation.id, grant.token) == (self.op, self.token)


@dataclass(frozen=True)
class _Untold:
    """A running operation that ended other than by its result, until the charm is told."""

    op: str
    why: str


class Worker:
    """Serves one unit's queue until stopped or until etcd is gone for too long."""

    def __init__(self, config: WorkerConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.client = EtcdClient(config.etcd)
        self.store = OperationStore(
            client=self.client, prefix=config.etcd.prefix, unit=config.unit
        )
        self.hooks = HookRunner(
            config.hook_runner, config.unit, config.charm_dir, config.hook_timeout
        )
        self._waiters = waiters_prefix(config.etcd.prefix)
        self._control = DomainControl(self.client, config.etcd.prefix, config.max_concurrent)
        self._lease: Lease | None = None
        self._semaphore: FairSemaphore | None = None
        self._watch: QueueWatch | None = None
        self._snapshot: QueueSnapshot | None = None
        self._lost: _LostGrant | None = None
        """Remembered across an etcd outage, so a lost operation is never granted again."""
        self._untold: _Untold | None = None
        """Remembered until the next pass fires the queue-changed hook for it."""
        self._etcd_down = False
        """The last etcd call failed: shutting down must not wait on a dead cluster."""
        self.sync = SyncServer(
            config, self.client, self._control, self._unanswered_hold, self._last_hold_ended
        )

    def run(self) -> int:
        """Serve until stopped; return the process exit code."""
        record("started", pid=os.getpid(), prefix=self.config.etcd.prefix)
        unreachable_since: float | None = None
        try:
            self._start_sync()
            self._note_etcd_version()
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
            self._tell_queue_changed()
            self._await_change(snapshot, timeout=None)
            return
        self._tell_queue_changed()
        grant = snapshot.queue.current
        if grant is not None and self._lost is not None and self._lost.matches(grant):
            self._end_lost(snapshot, self._lost.reason)
            return
        if grant is not None and grant.result is not None:
            self._finish(snapshot)
            return
        if not self._acquire():
            return
        state = self._claimable_state()
        if state is not None:
            self._claim(snapshot, state)

    def _claim(self, snapshot: QueueSnapshot, state: GrantState) -> None:
        """Start the head operation (or re-grant the running one) only if etcd proves we may.

        The claim is one transaction on the queue as we know it, conditioned on our waiter key
        still existing with the create revision we were granted under (so still within the
        first k), on no pause and on the same token floor. If any of that changed, nothing
        starts and the operation stays where it was.
        """
        semaphore = self._held_semaphore()
        token = state.token_for(semaphore.revision)
        if token is None:
            record("token-floor-raised", floor=state.floor, revision=semaphore.revision)
            self._release()  # enter again: a key created after the raise gets a valid token
            return
        grant = snapshot.queue.current

        def change(queue: UnitQueue) -> UnitQueue:
            if grant is not None:
                return queue.regrant(token, utcnow())
            return queue.claim(token, utcnow())

        try:
            snapshot = self._write(
                change, snapshot, [semaphore.held_condition(), *state.conditions()]
            )
        except ConditionFailedError:
            if not semaphore.still_held():
                self._lose_slot("claim", "waiter key gone (lease revoked or expired)")
            return  # otherwise a pause or a floor raise came in between: read the domain again
        assert snapshot.queue.current is not None  # noqa: S101 - just written
        claim = snapshot.queue.current
        op = claim.operation
        record(
            "granted",
            op=op.id,
            callback=op.callback,
            attempt=op.attempt,
            token=token,
            rerun=claim.rerun,  # a restart granted this attempt again: it may have run already
        )
        self._run_granted(op.id)

    def _finish(self, snapshot: QueueSnapshot) -> None:
        grant = snapshot.queue.current
        assert grant is not None  # noqa: S101 - checked by caller
        assert grant.result is not None  # noqa: S101 - checked by caller
        if (lost := self._lost_lock()) is not None:
            self._end_lost(snapshot, f"{lost} (before its {grant.result.value} was applied)")
            return
        holding = self._semaphore is not None and self._semaphore.token is not None
        kept = False

        def apply(queue: UnitQueue) -> UnitQueue:
            nonlocal kept
            new, kept = queue.finish(utcnow())
            return new

        conditions = [self._held_semaphore().held_condition()] if holding else []
        try:
            self._write(apply, snapshot, conditions)
        except ConditionFailedError:
            reason = f"waiter key gone before its {grant.result.value} was applied"
            record("lock-lost", stage="result", reason=reason, token=grant.token)
            self._end_lost(snapshot, reason)
            return
        record(
            "result",
            op=grant.operation.id,
            result=grant.result.value,
            token=grant.token,
            attempt=grant.operation.attempt,
        )
        if kept and holding:
            record(
                "granted",
                op=grant.operation.id,
                callback=grant.operation.callback,
                attempt=grant.operation.attempt + 1,
                token=grant.token,
            )
            self._run_granted(grant.operation.id)
            return
        self._release()

    # -- lock -------------------------------------------------------------------------------

    def _acquire(self) -> bool:
        """Hold a slot, waiting for one if needed; ``False`` when stopping or the lease went."""
        if self._semaphore is not None and self._semaphore.is_held():
            return True
        if self._lease is None or self._lease.lost.is_set() or self._semaphore is None:
            self._lease = Lease(self.client, self.config.lease_ttl, self._on_lease_lost)
            self._semaphore = FairSemaphore(
                self.client,
                self._waiters,
                self.config.max_concurrent,
                self._lease,
                self.config.unit,
            )
        started = time.monotonic()
        record("waiting", lease=f"{self._lease.id:x}")
        try:
            revision = self._semaphore.acquire(cancel=self.stop)
        except AcquireCancelledError:
            return False
        except LeaseLostError as error:
            record("lease-lost-while-waiting", error=str(error))
            return False
        record("acquired", token=revision, waited=round(time.monotonic() - started, 6))
        return True

    def _claimable_state(self) -> GrantState | None:
        """The domain's pause and token floor once a claim may be tried; ``None`` to go round.

        A pause is waited out by watch, keeping the slot. A lease found lost meanwhile ends the
        wait: the slot is dropped and the operation waits for the lock again.
        """
        waited: Pause | None = None
        while not self.stop.is_set():
            if (lost := self._lost_lock()) is not None:
                self._lose_slot("before-claim", lost)
                return None
            state = self._control.grant_state()
            if state.pause is None:
                if waited is not None:
                    record("pause-waited", reason=waited.reason, by=waited.by)
                return state
            if waited is None or (waited.reason, waited.by) != (
                state.pause.reason,
                state.pause.by,
            ):
                record("paused", reason=state.pause.reason, by=state.pause.by)
            waited = state.pause
            self._control.wait_for_change(state, self.stop, lambda: self._lost_lock() is not None)
        return None

    def _held_semaphore(self) -> FairSemaphore:
        semaphore = self._semaphore
        assert semaphore is not None  # noqa: S101 - only called while holding a slot
        return semaphore

    def _lost_lock(self) -> str | None:
        """Why the slot this worker holds is gone, as its lease knows it (no etcd request).

        The lease can only tell late (at its next refresh) or never (a key deleted by hand):
        the transactions that start or continue work prove the slot themselves.
        """
        if self._lease is None or self._semaphore is None or self._semaphore.token is None:
            return None
        try:
            self._lease.check()
        except LeaseLostError as error:
            return str(error)
        return None

    def _lose_slot(self, stage: str, reason: str) -> None:
        """Forget a slot etcd no longer gives us: no hook; a new lease for the next try."""
        token = self._semaphore.token if self._semaphore is not None else None
        if stage != "before-claim":  # before a claim, the lease already said so
            record("lock-lost", stage=stage, reason=reason, token=token)
        self._forget_lock()

    def _forget_lock(self) -> None:
        lease, semaphore = self._lease, self._semaphore
        self._lease, self._semaphore = None, None
        try:
            if semaphore is not None:
                semaphore.release()  # the key may outlive a lease lost only locally
            if lease is not None:
                lease.revoke()
        except EtcdError as error:  # both expire by themselves
            record("release-failed", error=str(error))

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
        self,
        change: Callable[[UnitQueue], UnitQueue],
        known: QueueSnapshot,
        conditions: Sequence[Any] = (),
    ) -> QueueSnapshot:
        self._snapshot = self.store.update(change, known, conditions)
        return self._snapshot

    def _await_change(self, known: QueueSnapshot, timeout: float | None) -> None:
        assert self._watch is not None  # noqa: S101 - opened by _current_snapshot
        fresh = self._watch.next_change(known, timeout, self.stop)
        if fresh is not None:
            self._snapshot = fresh

    def _end(self, snapshot: QueueSnapshot, outcome: Outcome, reason: str) -> None:
        """End the running operation for good (the worker's verdict, not the principal's)."""
        grant = snapshot.queue.current
        if grant is None:
            return
        op = grant.operation.id

        def end(queue: UnitQueue) -> UnitQueue:
            if queue.current is None or queue.current.operation.id != op:
                return queue  # already gone: nothing left to end
            return queue.abandon(outcome, reason, utcnow())

        self._write(end, snapshot)
        record("operation-ended", op=op, outcome=outcome.value, token=grant.token, reason=reason)
        self._untold = _Untold(op, outcome.value)

    def _end_lost(self, snapshot: QueueSnapshot, reason: str) -> None:
        """The lock went while the operation ran: record ``lock-lost``; never run it again."""
        grant = snapshot.queue.current
        assert grant is not None  # noqa: S101 - only called with a running operation
        self._lost = _LostGrant(grant.operation.id, grant.token, reason)
        self._forget_lock()
        self._end(snapshot, Outcome.LOCK_LOST, f"lock lost while running: {reason}")
        self._lost = None

    def _run_granted(self, op: str) -> None:
        """Fire the lock-granted hook, then wait for the result; give up after the attempts.

        A unit whose hooks cannot run must not hold the domain forever. Each attempt is due at
        a fixed time after the first one started (``hook_attempt_starts``: 0, 1, 3, 7 and 15 s
        by default), or starts when the attempt before it ended if that is later. So a failing
        hook's own run time does not add to the backoff: the operation ends as ``hook-failed``
        the last due time plus the last hook's run time after the first attempt started (a
        hook slower than the gap to the next due time delays it by the excess), and the lock
        goes to the next unit.
        """
        hook = self.config.lock_granted_hook
        first, failures, failure = time.monotonic(), 0, ""
        for due in hook_attempt_starts(self.config.hook_attempts):
            if failures and not self._await_attempt(op, first + due):
                return
            if (lost := self._lost_lock()) is not None:
                self._end_lost(self._current_snapshot(), lost)
                return
            try:
                self.hooks.fire(hook, self.stop)
            except HookFailedError as error:
                if self.stop.is_set():
                    return
                failures, failure = failures + 1, str(error)
                record("hook-failed", hook=hook, error=failure, attempt=failures)
                continue
            record("hook-fired", hook=hook)
            self._wait_for_result(op)
            return
        reason = f"{hook} failed {failures} times; last: {failure}"
        self._end(self._current_snapshot(), Outcome.HOOK_FAILED, reason)
        self._release()

    def _await_attempt(self, op: str, due: float) -> bool:
        """Wait until the monotonic time ``due``; ``False`` if stopping or ``op`` is gone."""
        return not (self.stop.wait(max(due - time.monotonic(), 0)) or self._operation_gone(op))

    def _operation_gone(self, op: str) -> bool:
        """Whether the running operation ``op`` left the queue meanwhile (``cancel``, revoked).

        Read fresh, only between failed hook attempts: a hook is not fired again for an
        operation that no longer runs; the next pass releases the lock.
        """
        self._snapshot = self.store.load()
        now = self._snapshot.queue.current
        if now is not None and now.operation.id == op:
            return False
        self._note_gone(op)
        return True

    def _note_gone(self, op: str) -> None:
        """``op`` was running here and someone else ended it (``cancel``, ``force-release``)."""
        record("operation-gone", op=op)
        self._untold = _Untold(op, "operation-gone")

    def _tell_queue_changed(self) -> None:
        """Fire the queue-changed hook once for an operation that ended without its result.

        Fired at the start of the next pass rather than where the end is seen: the lock is
        released by then (unless this unit keeps it for its next operation), and an etcd error
        in between does not lose it. A failure is only logged: the charm also reads its queue
        on its next hook, and the worker must go on serving the domain.
        """
        untold, self._untold = self._untold, None
        if untold is None:
            return
        hook = self.config.queue_changed_hook
        record("queue-changed", op=untold.op, why=untold.why)
        try:
            self.hooks.fire(hook, self.stop)
        except HookFailedError as error:
            record("hook-failed", hook=hook, error=str(error))

    def _last_hold_ended(self) -> None:
        """Called from a sync hold's thread: tell the charm if it waits to restart this worker.

        The charm holds a decided restart back while holds run (``restart-pending`` says so);
        no hook of its own follows a hold's end, so the worker fires one, and the restart does
        not wait for the next ``update-status``.
        """
        if not self.config.restart_pending.exists():
            return
        hook = self.config.queue_changed_hook
        record("restart-cue", hook=hook)
        try:
            self.hooks.fire(hook, self.stop)
        except HookFailedError as error:
            record("hook-failed", hook=hook, error=str(error))

    def _wait_for_result(self, op: str) -> None:
        """Wait by watch for the principal's result; end the operation if the lock goes first.

        ``op`` leaving the queue first means someone else ended it: the charm is told.
        """
        while not self.stop.is_set():
            snapshot = self._current_snapshot()
            grant = snapshot.queue.current
            if grant is None or grant.operation.id != op:
                self._note_gone(op)
                return
            if grant.result is not None:
                return
            if (lost := self._lost_lock()) is not None:
                self._end_lost(snapshot, lost)
                return
            self._await_change(snapshot, timeout=_WAKE_INTERVAL)

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

    def _start_sync(self) -> None:
        """Serve synchronous holds; without the socket, asynchronous operations still run."""
        try:
            self.sync.start()
        except OSError as error:
            record("sync-socket-failed", socket=str(self.config.sync_socket), error=str(error))

    def _note_etcd_version(self) -> None:
        """Publish etcd's release for the charm (``etcd_versions``): read once, at start.

        Known-bad releases are worth a note, not a stop: a failure here is only logged, and
        the loop then finds out about etcd by itself.
        """
        try:
            version = self.client.server_version()
            etcd_versions.publish(self.config.state_dir, version)
        except (EtcdError, OSError) as error:
            record("etcd-version-unknown", error=str(error))
            return
        record("etcd-version", version=version, warnings=etcd_versions.warnings(version))

    def _unanswered_hold(self) -> str | None:
        """What this worker holds the lock for while its principal has not answered, if any.

        Read from the sync server's threads: a glance at the main loop's state, which a
        synchronous hold of the same unit uses only to refuse a wait that could never end. A
        held slot is such a hold from the moment it is held: before the claim (a pause, the
        claim's round trip) the operation it will start is the head of the queue, and its hook
        cannot run either while the caller's hook holds the machine lock.
        """
        semaphore, snapshot = self._semaphore, self._snapshot
        if semaphore is None or semaphore.token is None:
            return None
        queue = snapshot.queue if snapshot is not None else None
        if queue is None:
            return "the operation it is about to start"
        if queue.current is not None:
            return queue.current.operation.id if queue.current.result is None else None
        return queue.pending[0].id if queue.pending else None

    def _shutdown(self) -> None:
        if self._watch is not None:
            self._watch.close()
        # Whatever etcd's state, stopping must be quick: the lease expires by itself anyway.
        self.client.settings = self.client.settings.model_copy(
            update={"total_timeout": _SHUTDOWN_BOUND, "call_timeout": _SHUTDOWN_BOUND / 2}
        )
        self.sync.close()
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


_PLAIN_EVENTS = frozenset({"stopped", "idle", "pause-waited", "waiting"})
"""Events logged without fields that still deserve a sentence."""


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: times, unit, event, a sentence and the event's fields.

    Records of the engine's other loggers (a warning with ``%s`` arguments) carry their text as
    ``event`` and no sentence.
    """

    def __init__(self, unit: str) -> None:
        super().__init__()
        self._unit = unit

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        event = record.getMessage()
        message = describe(event, fields) if fields or event in _PLAIN_EVENTS else None
        return json.dumps(
            {
                "ts": record.created,
                "time": iso(record.created),
                "unit": self._unit,
                "level": record.levelname,
                "event": event,
                **({"message": message} if message else {}),
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
    try:
        config = WorkerConfig.load(args.config)
    except (OSError, ValueError) as error:
        return _refuse(f"cannot use config {args.config}: {error}")
    configure_logging(config)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        worker = Worker(config, stop)
    except (OSError, ValueError) as error:  # credential files unreadable or not PEM
        record("credentials-unusable", error=str(error))
        return _refuse(f"cannot use the credential files of {args.config}: {error}")
    return worker.run()


def _refuse(message: str) -> int:
    """A clear one-line reason on stderr (the service's journal), not a traceback."""
    print(f"rollingops.worker: {message}", file=sys.stderr)
    return EXIT_BAD_CONFIG


if __name__ == "__main__":
    sys.exit(main())
