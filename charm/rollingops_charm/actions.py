"""Operator actions. Results are structured keys (nested maps), never prose.

Every action that needs etcd fails with a clear message when etcd cannot be used, and changes
nothing then.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import ops
from pydantic import JsonValue

from rollingops.backend_choice import Backend
from rollingops.command import to_argv
from rollingops.etcd_client import EtcdClient, EtcdError
from rollingops.models import Grant as EngineGrant
from rollingops.models import Operation, UnitQueue, utcnow

from .exclusive import CALLBACK as EXCLUSIVE
from .unit_record import ForcedRelease

if TYPE_CHECKING:
    from .charm import RollingOpsCharm

_T = TypeVar("_T")
_NO_ETCD = "etcd is not available (no relation, no credentials yet, or invalid config)"


def _indexed(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A list as a map keyed "1", "2", ...: Juju action results are maps."""
    return {str(index): item for index, item in enumerate(items, start=1)}


def _queue_summary(queue: UnitQueue) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "pending": _indexed(
            [{"op": op.id, "callback": op.callback, "attempt": op.attempt} for op in queue.pending]
        ),
    }
    if queue.current is not None:
        summary["running"] = _grant_summary(queue.current)
    return summary


def _grant_summary(grant: EngineGrant) -> dict[str, Any]:
    return {
        "op": grant.operation.id,
        "callback": grant.operation.callback,
        "token": grant.token,
        "since": grant.granted_at.isoformat(),
    }


def lock_status(charm: RollingOpsCharm, event: ops.ActionEvent) -> None:
    """Backend, holders, the domain's queue, this unit's queue, worker and etcd health."""
    record = charm.load_record()
    results: dict[str, Any] = {
        "unit": charm.unit.name,
        "worker-running": charm.worker_running(),
        "queue": _queue_summary(record.queue if record else UnitQueue()),
        "etcd-credentials": charm.credential_mode(),
    }
    backend = charm.backend()
    if backend is not Backend.ETCD:
        event.set_results({**results, **_peer_domain_view(charm, backend)})
        return
    settings = charm.etcd_settings()
    if settings is None:  # etcd chosen but not usable yet: nothing grants
        event.set_results({**results, "backend": "none", "etcd-reachable": False})
        return
    try:
        with EtcdClient(settings) as client:
            results |= _domain_view(charm, client)
    except EtcdError as error:
        results |= {"backend": "etcd", "etcd-reachable": False, "etcd-error": str(error)}
    event.set_results(results)


def _peer_domain_view(charm: RollingOpsCharm, backend: Backend) -> dict[str, Any]:
    """The backend actually granting (peer or none), its holders and queue, from the peer data.

    Holders are the leader's grants; the queue is each unit's waiting head in the order the
    leader would grant them. Under the peer backend each application is its own lock domain.
    """
    view = charm.peer_view()
    if view is None:
        return {"backend": backend.value, "holders": {}, "domain-queue": {}, "paused": False}
    grants = sorted(view.schedule.grants.values(), key=lambda g: g.token)
    waiting = sorted(
        (
            (unit, queue.pending[0])
            for unit, queue in view.queues.items()
            if queue.pending and unit not in view.schedule.grants
        ),
        key=lambda item: (item[1].attempt > 0, item[1].requested_at, item[0]),
    )
    return {
        "backend": backend.value,
        "holders": _indexed([{"unit": g.unit, "op": g.op_id, "token": g.token} for g in grants]),
        "domain-queue": _indexed([{"unit": unit, "op": op.id} for unit, op in waiting]),
        "paused": False,
    }


def _domain_view(charm: RollingOpsCharm, client: EtcdClient) -> dict[str, Any]:
    domain = charm.domain(client)
    contenders = domain.contenders()
    holders = []
    for contender in (c for c in contenders if c.holding):
        entry: dict[str, Any] = {"unit": contender.owner, "token": contender.token}
        owner_queue = charm.store(client, contender.owner).load()
        if owner_queue.queue.current is not None:
            entry |= _grant_summary(owner_queue.queue.current)
        holders.append(entry)
    pause = domain.paused()
    view: dict[str, Any] = {
        "backend": "etcd",
        "etcd-reachable": True,
        "holders": _indexed(holders),
        "domain-queue": _indexed(
            [{"unit": c.owner, "token": c.token} for c in contenders if not c.holding]
        ),
        "paused": pause is not None,
    }
    if pause is not None:
        view["pause"] = {"reason": pause.reason, "by": pause.by, "since": pause.since.isoformat()}
    return view


def history(charm: RollingOpsCharm, event: ops.ActionEvent) -> None:
    """The last ``count`` operations of this unit: waited, held, result."""
    count = int(event.params.get("count", 10))
    record = charm.load_record()
    entries = record.queue.history[-count:] if record else ()
    event.set_results(
        {
            "count": len(entries),
            "operations": _indexed(
                [
                    {
                        "unit": charm.unit.name,
                        "op": entry.id,
                        "callback": entry.callback,
                        "outcome": entry.outcome.value,
                        "attempts": entry.attempts,
                        "token": entry.token,
                        "waited": round(
                            (entry.granted_at - entry.requested_at).total_seconds(), 3
                        ),
                        "held": round((entry.finished_at - entry.granted_at).total_seconds(), 3),
                        "finished-at": entry.finished_at.isoformat(),
                        "reason": entry.reason,
                    }
                    for entry in entries
                ]
            ),
        }
    )


def _change_here(
    charm: RollingOpsCharm, event: ops.ActionEvent, change: Callable[[UnitQueue], UnitQueue]
) -> bool | None:
    """Off etcd, the unit's record is its queue: the change is made there.

    The peer backend publishes it from there, and a return to etcd copies the record's queue
    into etcd, so nothing is lost across a switch.
    """
    record = charm.load_record()
    if record is None:
        event.fail("the unit record is unreadable: nothing changed")
        return None
    try:
        queue = change(record.queue)
    except ValueError as error:  # full, duplicate id, unknown op
        event.fail(str(error))
        return None
    charm.save_record(record.model_copy(update={"queue": queue}))
    return True


def _with_etcd(
    charm: RollingOpsCharm, event: ops.ActionEvent, use: Callable[[EtcdClient], _T]
) -> _T | None:
    """Run ``use`` with a client; on any etcd or queue problem, fail the action, return None."""
    backend = charm.backend()
    if backend is not Backend.ETCD:
        event.fail(
            f"the application is on the {backend.value} backend, not etcd: this action acts on "
            "etcd's lock only (lock-status and cancel work on every backend)"
        )
        return None
    settings = charm.etcd_settings()
    if settings is None:
        event.fail(_NO_ETCD)
        return None
    try:
        with EtcdClient(settings) as client:
            return use(client)
    except EtcdError as error:
        event.fail(f"etcd: {error}")
    except ValueError as error:  # the queue refused (full, duplicate id)
        event.fail(str(error))
    return None


def _reason(event: ops.ActionEvent) -> str | None:
    """The action's ``reason``; fails the action when it is blank."""
    reason = str(event.params["reason"]).strip()
    if not reason:
        event.fail("a reason is required")
        return None
    return reason


def force_release(charm: RollingOpsCharm, event: ops.ActionEvent) -> None:
    """Take the lock away from a stuck holder; the reason is recorded."""
    owner, reason = str(event.params["unit"]), _reason(event)
    if reason is None:
        return
    tokens = _with_etcd(charm, event, lambda client: charm.domain(client).force_release(owner))
    if tokens is None:
        return
    if not tokens:
        event.fail(f"{owner} holds no lock")
        return
    record = charm.load_record()
    if record is not None:
        forced = ForcedRelease(unit=owner, tokens=tokens, reason=reason, at=utcnow())
        charm.save_record(record.model_copy(update={"forced": (*record.forced, forced)}))
    event.set_results(
        {"unit": owner, "released-tokens": ",".join(map(str, tokens)), "reason": reason}
    )


def cancel(charm: RollingOpsCharm, event: ops.ActionEvent) -> None:
    """Drop one operation of this unit, waiting or running, with the operator's reason."""
    op_id, reason = str(event.params["op"]), _reason(event)
    if reason is None:
        return
    record = charm.load_record()
    queue = record.queue if record else UnitQueue()
    was = "running" if queue.current and queue.current.operation.id == op_id else "waiting"

    def drop(queue: UnitQueue) -> UnitQueue:
        return queue.cancel(op_id, f"cancelled: {reason}", utcnow())

    if charm.backend() is Backend.ETCD:
        done = _with_etcd(charm, event, lambda c: charm.store(c).update(drop))
    else:
        done = _change_here(charm, event, drop)
    if done is not None:
        event.set_results({"op": op_id, "cancelled": True, "was": was, "reason": reason})


def pause(charm: RollingOpsCharm, event: ops.ActionEvent) -> None:
    """No new grants in the whole domain until ``resume``."""
    reason = _reason(event)
    if reason is None:
        return
    done = _with_etcd(charm, event, lambda c: charm.domain(c).pause(reason, by=charm.unit.name))
    if done is not None:
        event.set_results({"paused": True, "reason": done.reason, "since": done.since.isoformat()})


def resume(charm: RollingOpsCharm, event: ops.ActionEvent) -> None:
    """Grants go on."""
    was_paused = _with_etcd(charm, event, lambda client: charm.domain(client).resume())
    if was_paused is not None:
        event.set_results({"resumed": was_paused})


def run_exclusive(charm: RollingOpsCharm, event: ops.ActionEvent) -> None:
    """Queue an operator command to run on this machine under the lock."""
    try:
        argv = to_argv(event.params["command"])
    except ValueError as error:
        event.fail(f"command: {error}")
        return
    op = Operation(
        id=f"exclusive-{secrets.token_hex(4)}",
        callback=EXCLUSIVE,
        kwargs={"argv": list[JsonValue](argv), "timeout": float(event.params.get("timeout", 300))},
        max_retry=int(event.params.get("max-retry", 0)),
        requested_at=utcnow(),
    )
    if charm.backend() is Backend.ETCD:
        queued = _with_etcd(charm, event, lambda c: charm.store(c).update(lambda q: q.enqueue(op)))
    else:
        queued = _change_here(charm, event, lambda queue: queue.enqueue(op))
    if queued is not None:
        event.set_results({"op": op.id, "queued": True, "argv": " ".join(argv)})
