"""The unit's status, computed from one snapshot of what the charm knows (no I/O)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import ops

from rollingops.backend_choice import Backend
from rollingops.models import Outcome, utcnow

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
    return ops.ActiveStatus(_activity(record, inputs.max_concurrent, now, "etcd"))


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
    return ops.ActiveStatus(f"{where}: {_activity(record, inputs.max_concurrent, now, 'peer')}")


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


def _doing(record: UnitRecord, max_concurrent: int, now: dt.datetime, backend: str) -> str:
    queue = record.queue
    if queue.current is not None:
        op = queue.current.operation
        held = int((now - queue.current.granted_at).total_seconds())
        return f"holding lock: {op.callback} (op {op.id}, {held}s)"
    if queue.pending:
        where = f"position {record.position}" if record.position else "entering the queue"
        return f"waiting for lock: {where}, {len(queue.pending)} queued here"
    return f"idle ({backend}, max-concurrent {max_concurrent})"
