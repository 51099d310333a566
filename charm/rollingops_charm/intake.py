"""Turn what the principal wrote into queue changes: new operations, rejections, a result.

Pure functions (no ops, no etcd), so every bad-input case is a unit test. A request is taken
once: its id is remembered as *seen*, whatever the outcome, and never run twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from rollingops_principal import Finished, PrincipalBag, Rejection, Request, Result

from rollingops.backend_choice import Backend
from rollingops.models import Operation, OperationResult, UnitQueue, utcnow
from rollingops.peer_scheduler import PeerGrant

from .unit_record import UnitRecord

RESERVED_CALLBACKS = frozenset({"run-exclusive"})


@dataclass(frozen=True)
class Intake:
    """What one look at the principal's bag asks for."""

    operations: list[Operation]
    rejected: list[Rejection]
    results: tuple[Result, ...]
    """The principal's results; ``apply`` picks the one answering the running attempt."""


def take(bag: PrincipalBag, queue: UnitQueue, seen: set[str]) -> Intake:
    """New valid requests become operations; invalid ones are rejected with a reason."""
    operations: list[Operation] = []
    rejected = list(bag.rejected)
    taken: set[str] = set()
    for request in bag.requests:
        if request.id in seen or request.id in taken:
            continue
        taken.add(request.id)
        problem = _problem(request, queue)
        if problem:
            rejected.append(Rejection(id=request.id, reason=problem))
        else:
            operations.append(to_operation(request))
    return Intake(operations, rejected, bag.results)


def to_operation(request: Request) -> Operation:
    """The engine's operation for a protocol request (already validated)."""
    return Operation(
        id=request.id,
        callback=request.callback,
        kwargs=request.kwargs,
        max_retry=request.max_retry,
        requested_at=request.requested_at,
    )


def _problem(request: Request, queue: UnitQueue) -> str:
    if request.callback in RESERVED_CALLBACKS:
        return f"callback {request.callback!r} is reserved for the operator's actions"
    if request.id in queue.operation_ids():
        return f"operation id {request.id!r} is already queued"
    return ""


def _answer(results: tuple[Result, ...], queue: UnitQueue) -> Result | None:
    """The result for the running attempt, if reported and not applied yet."""
    grant = queue.current
    if grant is None or grant.result is not None:
        return None
    for result in results:
        if result.id == grant.operation.id and result.attempt == grant.operation.attempt:
            return result
    return None


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
    answer = _answer(intake.results, queue)
    if answer is not None:
        queue = queue.report(answer.id, OperationResult(answer.result))
    return queue, Applied(rejected, merged)


def absorb(record: UnitRecord, queue: UnitQueue, intake: Intake, applied: Applied) -> UnitRecord:
    """The record after one sync: the new queue, and what was seen, rejected or merged."""
    new_ids = [op.id for op in intake.operations] + [r.id for r in intake.rejected if r.id]
    rejected = [*intake.rejected, *applied.rejected]
    unseen = [r for r in dict.fromkeys(rejected) if r not in record.rejected]
    return record.model_copy(
        update={
            "queue": queue,
            "seen": (*record.seen, *new_ids),
            "rejected": (*record.rejected, *unseen),
            "merged": (*record.merged, *applied.merged),
        }
    )


def local_sync(
    record: UnitRecord,
    bag: PrincipalBag,
    backend: Backend,
    grant: PeerGrant | None,
    now: dt.datetime | None = None,
) -> UnitRecord:
    """Peer or none backend: the queue lives here, so this does the worker's part too.

    Requests and results are applied; a reported result finishes the operation (retry-hold
    runs again under the same grant); a grant from the leader is claimed, but never in the
    same pass as a finish, so a retry-release really gives the lock back.
    """
    now = now or utcnow()
    intake = take(bag, record.queue, set(record.seen))
    queue, applied = apply(record.queue, intake)
    finished = queue.current is not None and queue.current.result is not None
    if finished:
        queue, _kept = queue.finish(now)
    elif backend is Backend.PEER and grant is not None and _claimable(queue, grant):
        queue = queue.claim(grant.token, now)
    return absorb(record, queue, intake, applied).model_copy(update={"last_backend": backend})


def _claimable(queue: UnitQueue, grant: PeerGrant) -> bool:
    return queue.current is None and bool(queue.pending) and queue.pending[0].id == grant.op_id
