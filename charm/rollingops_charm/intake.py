"""Turn what the principal wrote into queue changes: new operations, rejections, a result.

Pure functions (no ops, no etcd), so every bad-input case is a unit test. A request is taken
once: its id is remembered as *seen*, whatever the outcome, and never run twice. An id is
remembered for as long as the principal lists it, so the memory is bounded by the principal's
bag (``MAX_LISTED``) and never forgets an id that could be taken again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from rollingops_principal import Finished, PrincipalBag, Rejection, Request, Result
from rollingops_principal.protocol import MAX_REQUESTS

from rollingops.backend_choice import Backend
from rollingops.models import Operation, OperationResult, UnitQueue, utcnow
from rollingops.peer_scheduler import PeerGrant, Revocation, unit_step

from .unit_record import UnitRecord

RESERVED_CALLBACKS = frozenset({"run-exclusive"})


@dataclass(frozen=True)
class Intake:
    """What one look at the principal's bag asks for."""

    operations: list[Operation]
    rejected: list[Rejection]
    results: tuple[Result, ...]
    """The principal's results; ``apply`` picks the one answering the running attempt."""
    taken: tuple[str, ...] = ()
    """Ids of the requests taken by this look, queued or rejected: seen from now on."""
    listed: frozenset[str] | None = None
    """Every id the principal lists now (``None``: unknown, forget nothing)."""


def take(bag: PrincipalBag, queue: UnitQueue, seen: set[str]) -> Intake:
    """New valid requests become operations; invalid ones are rejected with a reason.

    Requests already seen are skipped, valid or not, and do not count towards
    ``MAX_REQUESTS``: a principal that has not pruned them yet still gets its new ones taken.
    """
    operations: list[Operation] = []
    rejected = [r for r in bag.rejected if not r.id or r.id not in seen]
    taken = dict.fromkeys(r.id for r in rejected if r.id)
    for request in bag.requests:
        if request.id in seen or request.id in taken:
            continue
        taken[request.id] = None
        problem = _problem(request, queue)
        if not problem and len(operations) >= MAX_REQUESTS:
            problem = f"more than {MAX_REQUESTS} requests at once"
        if problem:
            rejected.append(Rejection(id=request.id, reason=problem))
        else:
            operations.append(to_operation(request))
    rejected += bag.rejected_results
    return Intake(operations, rejected, bag.results, tuple(taken), bag.listed)


def to_operation(request: Request) -> Operation:
    """The engine's operation for a protocol request (already validated).

    The request's timestamp is aware (the protocol refuses naive ones); it is stored in UTC,
    like every timestamp the engine writes.
    """
    return Operation(
        id=request.id,
        callback=request.callback,
        kwargs=request.kwargs,
        max_retry=request.max_retry,
        requested_at=request.requested_at.astimezone(dt.timezone.utc),
    )


def _problem(request: Request, queue: UnitQueue) -> str:
    if request.callback in RESERVED_CALLBACKS:
        return f"callback {request.callback!r} is reserved for the operator's actions"
    if request.id in queue.operation_ids():
        return f"operation id {request.id!r} is already queued"
    return ""


def _answer(results: tuple[Result, ...], queue: UnitQueue) -> Result | None:
    """The result for the running attempt, if reported and not applied yet.

    Only for an operation the principal requested: an operator's ``run-exclusive`` is
    reported by the charm once the command ran, never by the principal.
    """
    grant = queue.current
    if grant is None or grant.result is not None:
        return None
    if grant.operation.callback in RESERVED_CALLBACKS:
        return None
    for result in results:
        if result.id == grant.operation.id and result.attempt == grant.operation.attempt:
            return result
    return None


def _foreign(results: tuple[Result, ...], queue: UnitQueue) -> list[Rejection]:
    """Results for operations in this unit's queue that the principal did not request.

    Those are the operator's (``run-exclusive``, queued by an action): accepting the
    principal's word for them would finish a command that never ran.
    """
    operations = [*queue.pending, *([queue.current.operation] if queue.current else [])]
    principals = {op.id for op in operations if op.callback not in RESERVED_CALLBACKS}
    operators = {op.id for op in operations if op.callback in RESERVED_CALLBACKS}
    operators |= {e.id for e in queue.history if e.callback in RESERVED_CALLBACKS}
    return [
        Rejection(id=r.id, reason=f"result for {r.id}: not an operation this principal requested")
        for r in dict.fromkeys(results)
        if r.id in operators - principals
    ]


@dataclass(frozen=True)
class Applied:
    """What ``apply`` could not simply queue."""

    rejected: list[Rejection]
    merged: list[Finished]


def apply(queue: UnitQueue, intake: Intake) -> tuple[UnitQueue, Applied]:
    """Enqueue and report; an operation the queue refuses (full, duplicate) is rejected.

    Runs inside the compare-and-swap on the etcd queue, so the result is matched against the
    queue as it is in etcd, not against a copy.
    """
    rejected: list[Rejection] = []
    merged: list[Finished] = []
    for operation in intake.operations:
        try:
            grown = queue.enqueue(operation)
        except ValueError as error:
            rejected.append(Rejection(id=operation.id, reason=str(error)))
            continue
        if grown is queue:
            into = queue.pending[-1].id
            merged.append(
                Finished(
                    id=operation.id,
                    outcome="merged",
                    attempts=0,
                    reason=f"identical to waiting operation {into}",
                )
            )
        queue = grown
    rejected += _foreign(intake.results, queue)
    answer = _answer(intake.results, queue)
    if answer is not None:
        queue = queue.report(answer.id, OperationResult(answer.result))
    return queue, Applied(rejected, merged)


def absorb(record: UnitRecord, queue: UnitQueue, intake: Intake, applied: Applied) -> UnitRecord:
    """The record after one sync: the new queue, and what was seen, rejected or merged.

    Seen ids the principal no longer lists are forgotten: it pruned them, so they cannot be
    taken again. Every id it still lists is kept, however many others came since.
    """
    listed = intake.listed
    kept = record.seen if listed is None else tuple(i for i in record.seen if i in listed)
    seen = tuple(dict.fromkeys((*kept, *intake.taken)))
    rejected = [*intake.rejected, *applied.rejected]
    unseen = [r for r in dict.fromkeys(rejected) if r not in record.rejected]
    return record.model_copy(
        update={
            "queue": queue,
            "seen": seen,
            "rejected": (*record.rejected, *unseen),
            "merged": (*record.merged, *applied.merged),
        }
    )


def local_sync(
    record: UnitRecord,
    bag: PrincipalBag,
    backend: Backend,
    grant: PeerGrant | None,
    *,
    revocation: Revocation | None = None,
    now: dt.datetime | None = None,
) -> UnitRecord:
    """Peer or none backend: the queue lives here, so this does the worker's part too.

    Requests and results are applied, then the engine's ``unit_step`` ends a revoked
    operation, finishes a reported one or claims the leader's grant.
    """
    intake = take(bag, record.queue, set(record.seen))
    queue, applied = apply(record.queue, intake)
    queue = unit_step(queue, backend, grant, revocation, now or utcnow())
    return absorb(record, queue, intake, applied).model_copy(update={"last_backend": backend})
