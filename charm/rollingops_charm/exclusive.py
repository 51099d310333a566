"""Operator commands run under the lock (``run-exclusive``), in the lock-granted hook."""

from __future__ import annotations

from rollingops.command import run_command, to_argv
from rollingops.models import OperationResult, UnitQueue, utcnow
from rollingops.store import OperationStore, QueueSnapshot

from .unit_record import ExclusiveRun

CALLBACK = "run-exclusive"


def run_if_granted(
    store: OperationStore, snapshot: QueueSnapshot
) -> tuple[QueueSnapshot, ExclusiveRun | None]:
    """If the granted operation is an operator command, run it and report its result."""
    grant = snapshot.queue.current
    if grant is None or grant.result is not None or grant.operation.callback != CALLBACK:
        return snapshot, None
    op = grant.operation
    argv = to_argv(op.kwargs["argv"])  # type: ignore[arg-type]
    outcome = run_command(argv, float(op.kwargs.get("timeout", 300)))  # type: ignore[arg-type]
    result = OperationResult.RELEASE if outcome.ok else OperationResult.RETRY_RELEASE

    def report(queue: UnitQueue) -> UnitQueue:
        return queue.report(op.id, result)

    run = ExclusiveRun(
        id=op.id,
        argv=argv,
        exit_code=outcome.exit_code,
        output=outcome.output,
        finished_at=utcnow(),
    )
    return store.update(report, snapshot), run
