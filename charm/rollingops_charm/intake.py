"""Turn what the principal wrote into queue changes: new operations, rejections, a result.

Pure functions (no ops, no etcd), so every bad-input case is a unit test. A request is taken
once: its id is remembered as *seen*, whatever the outcome, and never run twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollingops_principal import PrincipalBag, Rejection, Request, Result

from rollingops.models import Operation, OperationResult, UnitQueue

RESERVED_CALLBACKS = frozenset({"run-exclusive"})


@dataclass(frozen=True)
class Intake:
    """What one look at the principal's bag asks for."""

    operations: list[Operation]
    rejected: list[Rejection]
    result: Result | None
    """The principal's answer to the running attempt, if it is there and not applied yet."""


def take(bag: PrincipalBag, queue: UnitQueue, seen: set[str]) -> Intake:
    """New valid requests become operations; invalid ones are rejected with a reason."""
    operations: list[Operation] = []
    rejected = [r for r in bag.rejected if r.id not in seen or not r.id]
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
    return Intake(operations, rejected, _answer(bag, queue))


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


def _answer(bag: PrincipalBag, queue: UnitQueue) -> Result | None:
    grant = queue.current
    if grant is None or grant.result is not None:
        return None
    for result in bag.results:
        if result.id == grant.operation.id and result.attempt == grant.operation.attempt:
            return result
    return None


def apply(queue: UnitQueue, intake: Intake) -> tuple[UnitQueue, list[Rejection]]:
    """Enqueue and report; an operation the queue refuses (full, duplicate) is rejected."""
    rejected: list[Rejection] = []
    for operation in intake.operations:
        try:
            queue = queue.enqueue(operation)
        except ValueError as error:
            rejected.append(Rejection(id=operation.id, reason=str(error)))
    if intake.result is not None:
        queue = queue.report(intake.result.id, OperationResult(intake.result.result))
    return queue, rejected
