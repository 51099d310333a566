"""The unit's status, computed from one snapshot of what the charm knows (no I/O)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import ops

from rollingops import etcd_versions
from rollingops.backend_choice import Backend
from rollingops.control import Pause
from rollingops.models import OperationResult, Outcome, UnitQueue, utcnow

from .unit_record import UnitRecord


@dataclass(frozen=True)
class StatusInputs:
    """Everything the status depends on."""

    config_error: str
    record_error: str
    has_etcd_relation: bool
    etcd_waiting_for: str
    """Why etcd cannot be used yet, in an operator's words; "" once it can."""
    worker_running: bool
    record: UnitRecord | None
    max_concurrent: int
    backend: Backend = Backend.ETCD
    backend_since: dt.datetime | None = None
    pause: Pause | None = None
    """The domain's pause, where the unit knows it without a request (the peer backend)."""
    restart_waits_for: str = ""
    """What a decided worker restart waits for (``worker_lifecycle``); "" when none waits."""
    etcd_version: str = ""
    """etcd's release as the worker read it at its start (``etcd_versions``); "" if unknown."""


def unit_status(inputs: StatusInputs, now: dt.datetime | None = None) -> ops.StatusBase:
    """The one status an operator needs at a glance, most urgent first."""
    now = now or utcnow()
    if inputs.config_error or inputs.record_error:
        return ops.BlockedStatus(inputs.config_error or inputs.record_error)
    record = inputs.record or UnitRecord()
    if inputs.backend is not Backend.ETCD:
        return _off_etcd(inputs, record, now)
    problem = _setup_problem(inputs)
    if problem is not None:
        return problem
    if record.etcd_failure is not None:
        since = record.etcd_failure.since.strftime("%H:%M")
        return ops.BlockedStatus(f"etcd unreachable since {since}: worker gave up, retrying")
    if not inputs.worker_running:
        return ops.MaintenanceStatus("starting the worker")
    activity = _activity(record, inputs.max_concurrent, now, "etcd")
    if inputs.restart_waits_for:
        activity += f"; worker restart waits for {inputs.restart_waits_for}"
    return ops.ActiveStatus("; ".join([activity, *etcd_versions.warnings(inputs.etcd_version)]))


def _off_etcd(inputs: StatusInputs, record: UnitRecord, now: dt.datetime) -> ops.StatusBase:
    """Status under the peer backend or with no backend at all."""
    since = (inputs.backend_since or now).strftime("%H:%M")
    if inputs.backend is Backend.NONE:
        return ops.BlockedStatus(f"no grants: etcd lost since {since} and fallback=none")
    if not inputs.has_etcd_relation:
        where = "peer backend (no etcd)"
    elif inputs.etcd_waiting_for:
        where = f"peer fallback since {since} (own domain; {inputs.etcd_waiting_for})"
    else:
        where = f"peer fallback since {since} (own domain)"
    paused = f"paused by {inputs.pause.by}: {inputs.pause.reason}; " if inputs.pause else ""
    activity = _activity(record, inputs.max_concurrent, now, "peer")
    return ops.ActiveStatus(f"{where}: {paused}{activity}")


def _setup_problem(inputs: StatusInputs) -> ops.StatusBase | None:
    """What stops the unit from working on etcd, if anything."""
    if not inputs.has_etcd_relation:
        return ops.BlockedStatus("no backend: integrate with charmed-etcd")
    if inputs.etcd_waiting_for:
        return ops.WaitingStatus(inputs.etcd_waiting_for)
    return None


def _activity(record: UnitRecord, max_concurrent: int, now: dt.datetime, backend: str) -> str:
    return _doing(record, max_concurrent, now, backend) + _last_failure(record)


def _last_failure(record: UnitRecord) -> str:
    """The last operation, if it ended because the lock was lost or its hook kept failing.

    An operator must see that an operation may have overlapped another unit's (lock-lost) or
    never ran (hook-failed); it stays in the status until the next operation ends.
    """
    history = record.queue.history
    if history and history[-1].outcome in (Outcome.LOCK_LOST, Outcome.HOOK_FAILED):
        last = history[-1]
        return f"; last op {last.id}: {last.outcome.value}"
    return ""


def _holding(queue: UnitQueue) -> bool:
    """Whether the unit still holds the lock as far as this hook can know.

    Once the principal answered ``release`` or ``retry-release``, the operation is over for it
    and the worker hands the lock on without another hook: saying "holding" would stay false
    until the next hook, minutes later. ``retry-hold`` keeps the lock.
    """
    running = queue.current
    return running is not None and running.result in (None, OperationResult.RETRY_HOLD)


def _doing(record: UnitRecord, max_concurrent: int, now: dt.datetime, backend: str) -> str:
    """What the unit does, true without asking etcd: exact positions are in ``lock-status``."""
    queue = record.queue
    if _holding(queue):
        assert queue.current is not None  # noqa: S101 - _holding checked it
        op = queue.current.operation
        held = int((now - queue.current.granted_at).total_seconds())
        return f"holding lock: {op.callback} (op {op.id}, {held}s)"
    if queue.pending:
        since = min(op.requested_at for op in queue.pending).strftime("%H:%M")
        return f"waiting for lock since {since}, {len(queue.pending)} queued here"
    return f"idle ({backend}, max-concurrent {max_concurrent})"
