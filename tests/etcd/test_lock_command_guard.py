"""``rollingops-lock`` never lets its command run while another unit holds, however it dies.

Real workers on real etcd, the real launcher in a subprocess. The command leaves a child in a
process group of its own (as a shell's job control does), still in its session; another unit's
``rollingops-lock`` waits for the lock and, once granted, looks at which of them still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from etcd_helpers import WorkerFarm, distro_build, wait_until
from rollingops_principal.errors import SyncLockError
from rollingops_principal.sync_wire import acquire
from test_lock_command import lock_command

from rollingops import command_session
from rollingops.control import DomainControl
from rollingops.lock_command import EXIT_LOST
from rollingops.sync_holds import holds_file, live_holds

__all__ = ["distro_build"]  # the one build these tests run on (etcd_helpers)

PYTHON = sys.executable
COMMAND = (  # argv[1]: where to write its pids, once its child runs
    "import json, os, subprocess, sys, time\n"
    "child = subprocess.Popen(['sleep', '600'], process_group=0)\n"
    "open(sys.argv[1] + '.tmp', 'w').write(json.dumps([os.getpid(), child.pid]))\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "time.sleep(600)\n"
)
LOOK = (  # the next holder's command: which of argv[1]'s pids still run (argv[2])
    "import json, sys\n"
    "def running(pid):\n"
    "    try:\n"
    "        stat = open(f'/proc/{pid}/stat').read()\n"
    "    except OSError:\n"
    "        return False\n"
    "    return stat.rsplit(')', 1)[1].split()[0] not in ('Z', 'X')\n"
    "pids = json.load(open(sys.argv[1]))\n"
    "open(sys.argv[2], 'w').write(json.dumps([pid for pid in pids if running(pid)]))\n"
)


def group_signal(signum: int) -> Callable[[subprocess.Popen[bytes]], None]:
    """What a dropped ssh session, a ^C or ^\\, a kill -- -PGID does: the launcher's group."""
    return lambda launcher: os.killpg(launcher.pid, signum)


def its_child_killed(launcher: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process ``rollingops-lock`` forked (before: a supervisor; now: the command)."""
    (child,) = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    os.kill(int(child), signal.SIGKILL)


KILLS: dict[str, Callable[[subprocess.Popen[bytes]], None]] = {
    "group SIGHUP": group_signal(signal.SIGHUP),
    "group SIGQUIT": group_signal(signal.SIGQUIT),
    "group SIGINT": group_signal(signal.SIGINT),
    "group SIGTERM": group_signal(signal.SIGTERM),
    "group SIGKILL": group_signal(signal.SIGKILL),
    "launcher alone SIGKILL": lambda launcher: launcher.kill(),
    "its forked child alone SIGKILL": its_child_killed,
}


def waiting(farm: WorkerFarm, unit: str) -> bool:
    return any(line["event"] == "sync-waiting" for line in farm.log(unit))


@pytest.mark.parametrize("kill", list(KILLS), ids=list(KILLS))
def test_no_process_of_the_command_runs_once_another_unit_holds(farm, tmp_path, kill):
    first = lock_command(farm, "app/0", tmp_path)
    second = lock_command(farm, "app/1", tmp_path)
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    launcher = subprocess.Popen(
        [str(first), "--", PYTHON, "-c", COMMAND, str(pids)], start_new_session=True
    )
    wait_until(pids.exists, timeout=60, what="the command and its child running")
    waiter = subprocess.Popen(
        [str(second), "--timeout", "120", "--", PYTHON, "-c", LOOK, str(pids), str(seen)]
    )
    wait_until(lambda: waiting(farm, "app/1"), timeout=60, what="the other unit waiting")
    KILLS[kill](launcher)
    launcher.wait(timeout=60)
    assert waiter.wait(timeout=120) == 0
    assert json.loads(seen.read_text()) == [], "the command ran while another unit held"


def test_timeout_s_kill_around_it_leaves_nothing_running_for_the_next_holder(farm, tmp_path):
    first = lock_command(farm, "app/0", tmp_path)
    second = lock_command(farm, "app/1", tmp_path)
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    # The bound only has to outlast a slow start; what is checked is what runs after it.
    launcher = subprocess.Popen(
        ["timeout", "-s", "KILL", "25", str(first), "--", PYTHON, "-c", COMMAND, str(pids)]
    )
    wait_until(pids.exists, timeout=25, what="the command and its child running")
    waiter = subprocess.Popen(
        [str(second), "--timeout", "120", "--", PYTHON, "-c", LOOK, str(pids), str(seen)]
    )
    wait_until(lambda: waiting(farm, "app/1"), timeout=25, what="the other unit waiting")
    assert launcher.wait(timeout=60) == -signal.SIGKILL
    assert waiter.wait(timeout=120) == 0
    assert json.loads(seen.read_text()) == [], "the command ran while another unit held"


TOLD = (  # records whether it was told (SIGTERM) or ran to its end; argv[2] says it runs
    "import pathlib, signal, sys, time\n"
    "out = pathlib.Path(sys.argv[1])\n"
    "def told(signum, frame):\n"
    "    out.write_text(signal.Signals(signum).name)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, told)\n"
    "pathlib.Path(sys.argv[2]).write_text('running')\n"
    "time.sleep(40)\n"
    "out.write_text('ran to its end')\n"
)


def force_release(farm: WorkerFarm, client) -> None:
    DomainControl(client, farm.cluster.prefix, 1).release_holders("app/0")


def stop_worker(farm: WorkerFarm, _client) -> None:
    farm.processes["app/0"].send_signal(signal.SIGTERM)


def kill_worker(farm: WorkerFarm, _client) -> None:
    """The worker dies without a word: its lease will free the lock; the launcher must act."""
    farm.processes["app/0"].kill()


@pytest.mark.parametrize(
    "end",
    [force_release, stop_worker, kill_worker],
    ids=["force-release", "stop", "worker-killed"],
)
def test_a_hold_lost_while_the_command_runs_sigterms_it_at_once_and_exits_70(
    farm, client, tmp_path, end
):
    command = lock_command(farm, "app/0", tmp_path)
    out, running = tmp_path / "out", tmp_path / "running"
    launcher = subprocess.Popen(
        [str(command), "--", PYTHON, "-c", TOLD, str(out), str(running)],
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(running.exists, timeout=60, what="the command running")
    end(farm, client)
    _, stderr = launcher.communicate(timeout=60)
    assert out.read_text() == "SIGTERM", "told when the hold ended, not left to run"
    assert launcher.returncode == EXIT_LOST, stderr
    assert "the lock was lost" in stderr


WAIT_FOR_GO = (
    "import pathlib, sys, time\n"
    "pathlib.Path(sys.argv[1]).write_text('running')\n"
    "while not pathlib.Path(sys.argv[2]).exists():\n"
    "    time.sleep(0.05)\n"
)
"""A command that says it runs (argv[1]), then waits until argv[2] exists."""


def test_the_charm_sees_a_running_hold_and_none_once_it_ended(farm, tmp_path):
    command = lock_command(farm, "app/0", tmp_path)
    state_dir = farm.config("app/0").state_dir
    running, go = tmp_path / "running", tmp_path / "go"
    argv = [str(command), "--holder", "nightly backup", "--", PYTHON, "-c", WAIT_FOR_GO]
    launcher = subprocess.Popen([*argv, str(running), str(go)])
    wait_until(running.exists, timeout=60, what="the command running")
    (hold,) = live_holds(state_dir)
    assert (hold.holder, hold.context) == ("nightly backup", "command")
    assert hold.token > 0
    go.touch()
    assert launcher.wait(timeout=60) == 0
    assert live_holds(state_dir) == ()


STUBBORN = (  # ignores SIGTERM (notes it in argv[2]); argv[1]: its pid, once it runs
    "import os, pathlib, signal, sys, time\n"
    "told = pathlib.Path(sys.argv[2])\n"
    "signal.signal(signal.SIGTERM, lambda signum, frame: told.write_text('told'))\n"
    "pathlib.Path(sys.argv[1] + '.tmp').write_text(f'[{os.getpid()}]')\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "time.sleep(600)\n"
)


def stubborn_holder_and_waiter(
    farm: WorkerFarm, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """app/0's rollingops-lock runs a command that ignores SIGTERM; app/1's waits behind it.

    The command writes its pids to ``pids`` and ``told`` when it gets SIGTERM; app/1's command
    writes to ``seen`` which of those still run when it starts.
    """
    first = lock_command(farm, "app/0", tmp_path)
    second = lock_command(farm, "app/1", tmp_path)
    pids, told, seen = tmp_path / "pids", tmp_path / "told", tmp_path / "seen"
    launcher = subprocess.Popen(
        [str(first), "--", PYTHON, "-c", STUBBORN, str(pids), str(told)], start_new_session=True
    )
    wait_until(pids.exists, timeout=60, what="the command running")
    waiter = subprocess.Popen(
        [str(second), "--timeout", "120", "--", PYTHON, "-c", LOOK, str(pids), str(seen)]
    )
    wait_until(lambda: waiting(farm, "app/1"), timeout=60, what="the other unit waiting")
    return launcher, waiter


def test_a_worker_killed_while_its_stop_waits_for_the_command_leaves_nothing_running(
    farm, tmp_path
):
    """systemd's SIGKILL at TimeoutStopSec, or any kill, during the command's SIGTERM grace.

    The worker has said ``lost`` and SIGTERMed the command, which ignores it; the worker dies
    before its SIGKILL. Its key goes at the lease's expiry: the launcher must end the command
    by then, though it was told already (before: it stopped listening after the notice, and
    the command ran on under the next holder).
    """
    launcher, waiter = stubborn_holder_and_waiter(farm, tmp_path)
    pids, told, seen = tmp_path / "pids", tmp_path / "told", tmp_path / "seen"
    farm.processes["app/0"].send_signal(signal.SIGTERM)
    wait_until(told.exists, timeout=30, what="the command told (SIGTERM) by the stopping worker")
    farm.processes["app/0"].kill()
    try:
        assert waiter.wait(timeout=120) == 0
        assert json.loads(seen.read_text()) == [], "the command ran while another unit held"
        assert launcher.wait(timeout=30) == EXIT_LOST
    finally:
        kill_left(pids)


def kill_left(pids: Path) -> None:
    """SIGKILL what a failed test left running (a command of 600 s)."""
    for pid in json.loads(pids.read_text()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_paused_worker_cannot_leave_its_command_running_past_the_hold_s_lease(farm, tmp_path):
    """The worker SIGSTOPped while the command runs: its lease is no longer refreshed.

    The key goes at the lease's expiry and the next unit is granted, while the paused worker
    can neither tell nor end the command. The launcher knows until when the hold is certain
    (the worker renews that with each lease refresh) and ends the command before then (before:
    the command ran on under the next holder for as long as the worker stayed paused).
    """
    launcher, waiter = stubborn_holder_and_waiter(farm, tmp_path)
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    farm.processes["app/0"].send_signal(signal.SIGSTOP)
    try:
        assert waiter.wait(timeout=120) == 0
        assert json.loads(seen.read_text()) == [], "the command ran while another unit held"
        assert launcher.wait(timeout=30) == EXIT_LOST
    finally:
        farm.processes["app/0"].send_signal(signal.SIGCONT)
        kill_left(pids)


def test_a_restarted_worker_rewrites_the_hold_file_a_killed_one_left(farm, tmp_path):
    """SIGKILLed under a hold, a worker leaves ``sync-holds.json`` naming the hold.

    The worker that replaces it serves no hold: it says so at start, so the charm does not hold
    a restart back for the old file (before: the file stayed until the next hold, trusted as
    soon as the old pid named any living process).
    """
    command = lock_command(farm, "app/0", tmp_path)
    state_dir = farm.config("app/0").state_dir
    running = tmp_path / "running"
    script = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(600)"
    launcher = subprocess.Popen([str(command), "--", PYTHON, "-c", script, str(running)])
    wait_until(running.exists, timeout=60, what="the command running")
    left = holds_file(state_dir).read_text()
    farm.processes["app/0"].kill()
    farm.processes["app/0"].wait(timeout=10)
    assert launcher.wait(timeout=30) == EXIT_LOST
    holds_file(state_dir).write_text(left)  # as the killed worker left it
    farm.start("app/0")
    wait_until(lambda: holds_file(state_dir).read_text() != left, what="the file rewritten")
    assert live_holds(state_dir) == ()


def test_a_launcher_paused_longer_than_the_ttl_lets_its_command_run_on(farm, tmp_path):
    """^Z on ``rollingops-lock`` (SIGTSTP; SIGSTOP here) then ``fg``: the hold was kept all along.

    The command runs in its own session, so it ran on, under the worker's hold; the launcher
    read no renewal meanwhile. On resume it must not take the stale ones for a mute worker
    (before: it ended the command at once and exited 70 for a hold never lost).
    """
    command = lock_command(farm, "app/0", tmp_path)
    running, go = tmp_path / "running", tmp_path / "go"
    launcher = subprocess.Popen(
        [str(command), "--", PYTHON, "-c", WAIT_FOR_GO, str(running), str(go)]
    )
    wait_until(running.exists, timeout=60, what="the command running")
    launcher.send_signal(signal.SIGSTOP)
    time.sleep(2 * farm.config("app/0").lease_ttl)
    launcher.send_signal(signal.SIGCONT)
    time.sleep(1.5)
    go.touch()
    assert launcher.wait(timeout=30) == 0, "the command ran to its end under the hold"


def _stranger() -> int:
    """A session leader that is not this process's child (its parent exited: re-parented)."""
    out = subprocess.run(
        ["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def _alive(pid: int) -> bool:
    found = command_session.stat(pid)
    return found is not None


def test_a_hostile_client_can_have_only_its_own_child_s_session_ended(farm, tmp_path):
    """Guard lines a hostile client may send (same uid): each is refused, the hold goes on.

    The worker signals as root: only a session that the client's own child leads, with the
    start time it has, may be taken on; one guard per hold. After the release, only that
    child's session is gone. No finding: the checks hold.
    """
    lock_command(farm, "app/0", tmp_path)  # its worker, listening
    grant = acquire(farm.config("app/0").sync_socket, 30, "hostile", "command")
    stranger = _stranger()
    member = subprocess.Popen(["sleep", "60"])  # a child, but not a session leader
    leader = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        leader_start = command_session.Session.of(leader.pid)
        stranger_start = command_session.Session.of(stranger)
        init = command_session.stat(1)
        assert leader_start is not None
        assert stranger_start is not None
        assert init is not None
        connection = grant._connection  # a line the client library never sends
        connection.sendall(b'{"op": "guard", "pid": 1, "start": %d}\n' % init.start)
        assert b'"error":"bad-request"' in connection.recv(4096)
        for pid, start in [
            (stranger, stranger_start.start),
            (member.pid, leader_start.start),
            (leader.pid, leader_start.start + 1),
        ]:
            with pytest.raises(SyncLockError, match="is not a session leader started by"):
                grant.guard(pid, start)
        assert grant.guard(leader.pid, leader_start.start) is not None
        with pytest.raises(SyncLockError, match="a command is guarded already"):
            grant.guard(stranger, stranger_start.start)
        grant.release()
        assert leader.wait(timeout=30) == -signal.SIGTERM, "the guarded session was ended"
        assert _alive(stranger)
        assert member.poll() is None
    finally:
        for pid in (stranger, member.pid, leader.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        member.wait()
        leader.wait()


def test_an_orphan_that_ignores_sigterm_is_gone_before_the_next_unit_holds(farm, tmp_path):
    """The command exits at once, leaving a daemon-like child that ignores SIGTERM.

    The release waits for it: SIGTERM, SIGKILL after the grace, then the key. The command's own
    status is the launcher's. No finding.
    """
    first = lock_command(farm, "app/0", tmp_path)
    second = lock_command(farm, "app/1", tmp_path)
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    orphan = f"(trap '' TERM; exec sleep 600) & echo \"[$!]\" > {pids}.tmp; mv {pids}.tmp {pids}"
    waiter: subprocess.Popen[bytes] | None = None
    launcher = subprocess.Popen([str(first), "--", "sh", "-c", orphan + "; exec sleep 3"])
    try:
        wait_until(pids.exists, timeout=60, what="the orphan-to-be running")
        waiter = subprocess.Popen(
            [str(second), "--timeout", "120", "--", PYTHON, "-c", LOOK, str(pids), str(seen)]
        )
        assert launcher.wait(timeout=60) == 0
        assert waiter.wait(timeout=120) == 0
        assert json.loads(seen.read_text()) == [], "the orphan ran while another unit held"
    finally:
        kill_left(pids)
