"""A hook that keeps failing gives the operation up and frees the lock (issue 9, finding 3)."""

from __future__ import annotations

from pathlib import Path

from etcd_helpers import WorkerFarm, distro_build, operation, wait_until
from test_worker import events, finished

from rollingops.models import Outcome
from rollingops.worker_config import WorkerConfig

DEFAULT_ATTEMPTS = WorkerConfig.model_fields["hook_attempts"].default
__all__ = ["distro_build"]  # the worker's retry backoff (31 s), not etcd: one build (etcd_helpers)


def failing_runner(farm: WorkerFarm) -> tuple[Path, Path]:
    """A juju-exec that records each call, then fails like an unreachable unit agent."""
    calls = farm.root / "failing-calls"
    runner = farm.root / "failing-juju-exec"
    runner.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\necho "cannot reach the unit agent" >&2\nexit 1\n'
    )
    runner.chmod(0o755)
    return runner, calls


def test_a_hook_that_keeps_failing_drops_the_operation_and_frees_the_lock(farm, client):
    runner, calls = failing_runner(farm)
    farm.start("app/0", hook_runner=runner)
    farm.enqueue(client, "app/0", operation("doomed"))
    wait_until(lambda: events(farm, "app/0", "hook-failed"), what="first failure")
    farm.start("app/1")
    farm.enqueue(client, "app/1", operation("next"))
    (done,) = finished(farm, client, "app/1", 1)
    (dropped,) = finished(farm, client, "app/0", 1)
    assert (dropped.id, dropped.outcome) == ("doomed", Outcome.HOOK_FAILED)
    assert f"failed {DEFAULT_ATTEMPTS} times" in dropped.reason
    assert "cannot reach the unit agent" in dropped.reason
    granted = [c for c in calls.read_text().splitlines() if "rollingops-lock-granted" in c]
    assert len(granted) == DEFAULT_ATTEMPTS
    assert done.outcome is Outcome.DONE
    assert done.token > dropped.token
    assert farm.store(client, "app/0").load().queue.current is None
    told = wait_until(
        lambda: [e for e in events(farm, "app/0", "hook-failed") if "queue-changed" in e["hook"]],
        what="the queue-changed hook tried",
    )
    assert len(told) == 1
    assert farm.processes["app/0"].poll() is None, "a failed queue-changed hook is not fatal"
