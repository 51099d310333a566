"""Operator actions, each done through the unit's ``LockBackend``, whichever grants now.

Results are structured keys (nested maps), never prose. An action the backend cannot do fails
with the backend's reason and changes nothing. See docs/actions.md for the semantics under each
backend.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import ops
from pydantic import JsonValue, ValidationError

from rollingops import etcd_versions
from rollingops.command import to_argv
from rollingops.etcd_client import EtcdError
from rollingops.models import Claim, CompletedOperation, Operation, utcnow

from .backends import BackendError, DomainView, LockBackend
from .exclusive import CALLBACK as EXCLUSIVE
from .unit_record import ExclusiveRun, ForcedRelease, RecordStore, UnitRecord

_T = TypeVar("_T")
MAX_TIMEOUT = 86400.0
"""Seconds a run-exclusive command may run (a day)."""
OUTPUT_TAIL = 2000
"""Characters of a run-exclusive command's output shown by ``history``."""


@dataclass(frozen=True)
class ActionContext:
    """What an action may use: the unit's backend and record, and what lock-status reports."""

    unit: str
    backend: LockBackend
    records: RecordStore
    worker_running: Callable[[], bool]
    credentials: str
    worker_events: Callable[[], list[str]]
    """The worker's last events, a sentence each with its ISO time."""
    etcd_version: Callable[[], str] = lambda: ""
    """etcd's release as the worker read it at its start (``etcd_versions``); "" if unknown."""


def _indexed_lines(lines: list[str]) -> dict[str, str]:
    """Lines as a map keyed "01", "02"... (so that they sort as listed)."""
    return {f"{index:02d}": line for index, line in enumerate(lines, start=1)}


def _indexed(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A list as a map keyed "1", "2", ...: Juju action results are maps."""
    return {str(index): item for index, item in enumerate(items, start=1)}


def _attempt(event: ops.ActionEvent, use: Callable[[], _T]) -> _T | None:
    """Run ``use``; on a backend, etcd or queue refusal, fail the action and return None."""
    try:
        return use()
    except BackendError as error:
        event.fail(str(error))
    except EtcdError as error:
        event.fail(f"etcd: {error}")
    except ValueError as error:  # the queue refused (full, duplicate id, unknown op)
        event.fail(str(error))
    return None


def _record(context: ActionContext, event: ops.ActionEvent) -> UnitRecord | None:
    record = context.records.load()
    if record is None:
        event.fail("the unit record is unreadable: nothing changed")
    return record


MAX_REASON = 1024
"""Longest reason kept: it travels in etcd keys, databags and every worker's log."""


def _reason(event: ops.ActionEvent) -> str | None:
    """The action's ``reason``; fails the action when it is blank or too long."""
    reason = str(event.params["reason"]).strip()
    if not reason:
        event.fail("a reason is required")
        return None
    if len(reason) > MAX_REASON:
        event.fail(f"a reason is at most {MAX_REASON} characters (got {len(reason)})")
        return None
    return reason


def _grant_summary(grant: Claim) -> dict[str, Any]:
    return {
        "op": grant.operation.id,
        "callback": grant.operation.callback,
        "token": grant.token,
        "since": grant.granted_at.isoformat(),
    }


def lock_status(context: ActionContext, event: ops.ActionEvent) -> None:
    """The backend granting now, its holders and whole queue in order, the pause, this unit."""
    record = context.records.load() or UnitRecord()
    results: dict[str, Any] = {
        "unit": context.unit,
        "worker-running": context.worker_running(),
        "etcd-credentials": context.credentials,
    }
    if events := context.worker_events():
        results["worker-events"] = _indexed_lines(events)
    results |= _etcd_version_results(context.etcd_version())
    try:
        view = context.backend.domain()
        queue = context.backend.live_queue(record)
    except EtcdError as error:
        view = DomainView(context.backend.granting, error=str(error))
        queue = record.queue
    results["queue"] = {
        "pending": _indexed(
            [{"op": op.id, "callback": op.callback, "attempt": op.attempt} for op in queue.pending]
        ),
        **({"running": _grant_summary(queue.current)} if queue.current else {}),
    }
    event.set_results(results | _domain_results(view, context.unit))


def _etcd_version_results(version: str) -> dict[str, Any]:
    """The etcd release the worker read, and its known bugs with the release fixing each."""
    if not version:
        return {}
    warnings = etcd_versions.warnings(version)
    return {
        "etcd-version": version,
        **({"etcd-known-bugs": _indexed_lines(warnings)} if warnings else {}),
    }


def _domain_results(view: DomainView, unit: str) -> dict[str, Any]:
    granting = view.granting.value if view.granting else "none"
    results: dict[str, Any] = {
        "backend": granting,
        "holders": _indexed(
            [
                {
                    "unit": h.unit,
                    "token": h.token,
                    **({"op": h.op} if h.op else {}),
                    **({"callback": h.callback} if h.callback else {}),
                    **({"since": h.since.isoformat()} if h.since else {}),
                    **({"sync": True} if h.sync else {}),
                }
                for h in view.holders
            ]
        ),
        "domain-queue": _indexed(
            [
                {
                    "unit": w.unit,
                    **({"op": w.op} if w.op else {}),
                    **({"sync": True} if w.sync else {}),
                }
                for w in view.queue
            ]
        ),
        "paused": view.pause is not None,
    }
    position = next(
        (i for i, w in enumerate(view.queue, start=1) if w.unit == unit and not w.sync), None
    )
    if position is not None:
        results["position"] = position
    if view.pause is not None:
        pause = view.pause
        results["pause"] = {
            "reason": pause.reason,
            "by": pause.by,
            "since": pause.since.isoformat(),
        }
    if view.error:
        results |= {"etcd-reachable": False, "etcd-error": view.error}
    elif view.granting is not None:
        results["etcd-reachable"] = view.granting.value == "etcd"
    return results


def history(context: ActionContext, event: ops.ActionEvent) -> None:
    """The last ``count`` operations of this unit, read live from the backend."""
    count = int(event.params.get("count", 10))
    record = context.records.load() or UnitRecord()
    source = "etcd" if context.backend.granting and not context.backend.queue_is_local else "unit"
    try:
        queue = context.backend.live_queue(record)
    except EtcdError as error:
        queue, source = record.queue, f"mirror (etcd unreachable: {error})"
    runs = {run.id: run for run in record.exclusive_runs}
    entries = queue.history[-count:]
    event.set_results(
        {
            "count": len(entries),
            "source": source,
            "operations": _indexed([_history_entry(context.unit, e, runs) for e in entries]),
        }
    )


def _history_entry(
    unit: str, entry: CompletedOperation, runs: dict[str, ExclusiveRun]
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "unit": unit,
        "op": entry.id,
        "callback": entry.callback,
        "outcome": entry.outcome.value,
        "attempts": entry.attempts,
        "token": entry.token,
        "waited": round((entry.granted_at - entry.requested_at).total_seconds(), 3),
        "held": round((entry.finished_at - entry.granted_at).total_seconds(), 3),
        "finished-at": entry.finished_at.isoformat(),
        "reason": entry.reason,
    }
    run = runs.get(entry.id)
    if run is not None:
        item["exit-code"] = "none" if run.exit_code is None else run.exit_code
        item["output-tail"] = run.output[-OUTPUT_TAIL:]
    return item


def force_release(context: ActionContext, event: ops.ActionEvent) -> None:
    """Take the lock from a stuck holder; its operation ends ``revoked``, the reason recorded."""
    owner, reason = str(event.params["unit"]), _reason(event)
    record = _record(context, event) if reason else None
    if reason is None or record is None:
        return
    tokens = _attempt(event, lambda: context.backend.force_release(owner, reason))
    if tokens is None:
        return
    if not tokens:
        event.fail(f"{owner} holds no lock")
        return
    forced = ForcedRelease(unit=owner, tokens=tokens, reason=reason, at=utcnow())
    context.records.save(record.model_copy(update={"forced": (*record.forced, forced)}))
    event.set_results(
        {"unit": owner, "released-tokens": ",".join(map(str, tokens)), "reason": reason}
    )


def cancel(context: ActionContext, event: ops.ActionEvent) -> None:
    """Drop one operation of this unit, waiting or running, with the operator's reason."""
    op_id, reason = str(event.params["op"]), _reason(event)
    record = _record(context, event) if reason else None
    if reason is None or record is None:
        return
    running = record.queue.current
    was = "running" if running and running.operation.id == op_id else "waiting"
    changed = _attempt(event, lambda: context.backend.cancel(record, op_id, reason))
    if changed is not None:
        context.records.save(changed)
        event.set_results({"op": op_id, "cancelled": True, "was": was, "reason": reason})


def pause(context: ActionContext, event: ops.ActionEvent) -> None:
    """No new grants in the whole domain until ``resume``."""
    reason = _reason(event)
    if reason is None:
        return
    done = _attempt(event, lambda: context.backend.pause(reason, by=context.unit))
    if done is not None:
        event.set_results({"paused": True, "reason": done.reason, "since": done.since.isoformat()})


def resume(context: ActionContext, event: ops.ActionEvent) -> None:
    """Grants go on."""
    was_paused = _attempt(event, context.backend.resume)
    if was_paused is not None:
        event.set_results({"resumed": was_paused})


def _field(loc: tuple[int | str, ...]) -> str:
    """An operation field as the action names it (``max_retry`` is ``max-retry``)."""
    return ".".join(str(part).replace("_", "-") for part in loc)


def _timeout(event: ops.ActionEvent) -> float:
    timeout = float(event.params.get("timeout", 300))
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be more than 0 and at most {MAX_TIMEOUT} seconds")
    return timeout


def run_exclusive(context: ActionContext, event: ops.ActionEvent) -> None:
    """Queue an operator command to run on this machine under the lock."""
    try:
        argv = to_argv(event.params["command"])
    except ValueError as error:
        event.fail(f"command: {error}")
        return
    record = _record(context, event)
    if record is None:
        return
    try:
        op = Operation(
            id=f"exclusive-{secrets.token_hex(4)}",
            callback=EXCLUSIVE,
            kwargs={"argv": list[JsonValue](argv), "timeout": _timeout(event)},
            max_retry=int(event.params.get("max-retry", 0)),
            requested_at=utcnow(),
        )
    except ValidationError as error:
        event.fail("; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in error.errors()))
        return
    except ValueError as error:
        event.fail(str(error))
        return
    queued = _attempt(event, lambda: context.backend.enqueue(record, op))
    if queued is None:
        return
    context.records.save(queued)
    results: dict[str, Any] = {"op": op.id, "queued": True, "argv": " ".join(argv)}
    same = [w for w in queued.queue.pending if w.same_request(op) and w.id != op.id]
    if op.id not in queued.queue.operation_ids() and same:
        # The same command already waits: it runs once, and that is the id to follow.
        results |= {"op": same[-1].id, "merged": True}
    event.set_results(results)
