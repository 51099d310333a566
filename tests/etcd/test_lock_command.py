"""``rollingops-lock`` (the launcher the charm writes) against real workers on real etcd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from etcd_helpers import WorkerFarm, distro_build, operation, wait_until

from rollingops.control import DomainControl
from rollingops.lock_command import EXIT_TIMEOUT, EXIT_UNAVAILABLE, EXIT_USAGE, launcher

PYTHON = Path(sys.executable)


__all__ = ["distro_build"]  # the one build these tests run on (etcd_helpers)


def lock_command(farm: WorkerFarm, unit: str, tmp_path: Path) -> Path:
    """The launcher, as the charm writes it for ``unit``, after its worker listens."""
    farm.start(unit)
    socket = farm.config(unit).sync_socket
    wait_until(socket.is_socket, what=f"{unit}'s sync socket")
    path = tmp_path / f"rollingops-lock-{unit.replace('/', '-')}"
    path.write_text(launcher(PYTHON, [Path(p) for p in sys.path if p], socket))
    path.chmod(0o700)
    return path


def started(farm: WorkerFarm, op: str) -> float | None:
    return next((r["ts"] for r in farm.records() if r["event"] == "start" and r["op"] == op), None)


def ended(farm: WorkerFarm, op: str) -> float | None:
    return next((r["ts"] for r in farm.records() if r["event"] == "end" and r["op"] == op), None)


def test_runs_the_command_under_the_lock_without_a_shell_and_returns_its_status(
    farm, client, tmp_path
):
    command = lock_command(farm, "app/0", tmp_path)
    farm.start("app/1")
    out = tmp_path / "out"
    script = (
        "import os, sys, time, pathlib\n"
        "token = os.environ['ROLLINGOPS_TOKEN']\n"
        "pathlib.Path(sys.argv[1]).write_text(token + ' ' + sys.argv[2])\n"
        "time.sleep(1)\n"
        "sys.exit(7)\n"
    )
    hostile = f"$(touch {tmp_path}/pwned); `id` && echo; 'quoted' \"x\""
    process = subprocess.Popen([str(command), "--", str(PYTHON), "-c", script, str(out), hostile])
    wait_until(out.exists, what="the command running")
    farm.enqueue(client, "app/1", operation("restart"))
    assert process.wait(timeout=30) == 7, "the command's own status"
    finished_at = time.time()
    token, argument = out.read_text().split(" ", 1)
    assert argument == hostile, "the argument reached the command as given"
    begun = wait_until(lambda: started(farm, "restart"), what="the async op after it")
    assert begun <= finished_at + 30
    (start,) = [r for r in farm.records() if r["event"] == "start"]
    assert start["token"] > int(token)
    assert not (tmp_path / "pwned").exists()


def test_not_granted_in_time_exits_75_and_leaves_nothing(farm, client, tmp_path):
    command = lock_command(farm, "app/0", tmp_path)
    farm.start("app/1")
    farm.enqueue(client, "app/1", operation("long", hold=30))  # outlasts a slow start below
    wait_until(lambda: started(farm, "long"), what="an async holder")
    done = subprocess.run(
        [str(command), "--timeout", "0.5", "--", "true"], capture_output=True, text=True
    )
    assert done.returncode == EXIT_TIMEOUT
    assert "not granted" in done.stderr
    owners = [c.owner for c in DomainControl(client, farm.cluster.prefix, 1).contenders()]
    assert owners == ["app/1"]


def test_no_worker_exits_69_with_the_reason(tmp_path):
    path = tmp_path / "rollingops-lock"
    path.write_text(launcher(PYTHON, [Path(p) for p in sys.path if p], tmp_path / "sync.sock"))
    path.chmod(0o700)
    done = subprocess.run([str(path), "--", "true"], capture_output=True, text=True)
    assert done.returncode == EXIT_UNAVAILABLE
    assert "no rollingops worker answers" in done.stderr


def test_a_command_ended_by_a_signal_exits_as_a_shell_says(farm, tmp_path):
    command = lock_command(farm, "app/0", tmp_path)
    done = subprocess.run([str(command), "--", "sh", "-c", "kill -TERM $$"], check=False)
    assert done.returncode == 128 + signal.SIGTERM


def test_inside_a_hook_it_is_refused_at_once_when_its_unit_holds_an_unanswered_op(
    farm, client, tmp_path
):
    command = lock_command(farm, "app/0", tmp_path)
    farm.enqueue(client, "app/0", operation("mine", hold=30))
    wait_until(lambda: started(farm, "mine"), what="this unit's own operation running")
    done = subprocess.run(
        [str(command), "--timeout", "25", "--", "true"],
        env={**os.environ, "JUJU_CONTEXT_ID": "principal-0-stop-1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == EXIT_UNAVAILABLE, "refused, not timed out (75)"
    assert "holds the lock for operation mine" in done.stderr
    assert ended(farm, "mine") is None, "at once: the operation it would wait for still runs"


USAGE_ERRORS = [
    (["--timeout", "0"], "invalid timeout"),
    (["--timeout", "-1"], "invalid timeout"),
    (["--timeout", "nan"], "invalid timeout"),
    (["--timeout", "inf"], "invalid timeout"),
    (["--timeout", "7200"], "invalid timeout"),
    (["--holder", "tab\there"], "invalid holder"),
    (["--holder", "x" * 65], "invalid holder"),
    (["--unit", "../etc"], "invalid --unit"),
]


@pytest.mark.parametrize(("option", "reason"), USAGE_ERRORS, ids=range(len(USAGE_ERRORS)))
def test_a_usage_error_exits_64_with_the_reason_not_69(option, reason):
    # The module itself, as the launcher runs it (which adds --socket, exclusive with --unit).
    argv = [str(PYTHON), "-m", "rollingops.lock_command", *option, "--", "true"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert reason in done.stderr
