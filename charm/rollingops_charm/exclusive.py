"""Operator commands run under the lock (``run-exclusive``), in the lock-granted hook."""

from __future__ import annotations

from rollingops.command import run_command, to_argv
from rollingops.models import OperationResult, UnitQueue, utcnow
from rollingops.store import QueueSnapshot, QueueStore

from .unit_record import ExclusiveRun

CALLBACK = "run-exclusive"


def run_granted(queue: UnitQueue) -> tuple[OperationResult, ExclusiveRun] | None:
    """If the granted operation is an operator command not run yet, run it (never a shell)."""
    grant = queue.current
    if grant is None or grant.result is not None or grant.operation.callback != CALLBACK:
        return None
    op = grant.operation
    argv = to_argv(op.kwargs["argv"])  # type: ignore[arg-type]
    outcome = run_command(argv, float(op.kwargs.get("timeout", 300)))  # type: ignore[arg-type]
    result = OperationResult.RELEASE if outcome.ok else OperationResult.RETRY_RELEASE
    run = ExclusiveRun(
        id=op.id,
        argv=argv,
        exit_code=outcome.exit_code,
        output=outcome.output,
        finished_at=utcnow(),
    )
    return result, run


def run_if_granted(
    store: QueueStore, snapshot: QueueSnapshot
) -> tuple[QueueSnapshot, ExclusiveRun | None]:
    """On etcd: run a granted operator command and report its result in etcd."""
    ran = run_granted(snapshot.queue)
    if ran is None:
        return snapshot, None
    result, run = ran
    return store.update(lambda queue: queue.report(run.id, result), snapshot), run


def run_here(queue: UnitQueue) -> tuple[UnitQueue, ExclusiveRun | None]:
    """Peer backend: the unit's own queue is the truth; run and report there."""
    ran = run_granted(queue)
    if ran is None:
        return queue, None
    result, run = ran
    return queue.report(run.id, result), run
