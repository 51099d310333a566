"""``rollingops-lock``: run a command while holding a unit's lock domain, like ``etcdctl lock``.

    rollingops-lock [--unit APP/N | --socket PATH] [--timeout S] [--holder LABEL] -- CMD [ARG...]

For scripts and operators on a machine (cron jobs, maintenance scripts, principals related over
``juju-info`` that cannot use the library); each unit's charm writes a launcher of it, bound to
its socket, as ``/var/lib/rollingops/<app>-<n>/rollingops-lock``. It asks the unit's worker
for a synchronous hold (``sync_server``), runs ``CMD`` with its arguments as given (never
through a shell) with the fencing token in ``ROLLINGOPS_TOKEN``, and releases when the command
exits. The command runs in a process group of its own under a supervisor (a fork of this
process): killed itself, the connection drops, the worker releases and the supervisor kills the
whole group at once (parent-death signal); SIGTERM and SIGINT are passed on to the group, and
the command's end (and that of anything it left in its group) is waited for before the release.

Exit status: the command's own (128 + N if signal N ended it); 75 when the lock was not granted
in time; 69 when no worker can grant it (none on this machine, peer backend, stopping) or it
refused; 70 when the lock was lost while the command ran (the command's status is printed); 64
for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rollingops_principal.errors import (
    SyncLockError,
    SyncLockLostError,
    SyncLockTimeoutError,
    SyncLockUnavailableError,
)
from rollingops_principal.sync_wire import Context, SyncGrant, acquire

from .worker_config import SYNC_SOCKET_NAME, state_base, unit_dir

EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69
EXIT_LOST = 70
EXIT_TIMEOUT = 75
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_GRACE = 10.0
"""Seconds what the command left running gets after SIGTERM, before SIGKILL."""


def launcher(python: Path, python_path: Sequence[Path], socket: Path) -> str:
    """The source of one unit's ``rollingops-lock`` (the charm writes it next to the socket).

    It runs this module with the charm's interpreter and import path, on that unit's socket.
    """
    return "\n".join(
        [
            f"#!{python}",
            '"""rollingops-lock for the unit whose directory holds this file (see --help)."""',
            "import sys",
            f"sys.path[:0] = {[str(path) for path in python_path]!r}",
            "from rollingops.lock_command import main",
            f"sys.argv[1:1] = ['--socket', {str(socket)!r}]",
            "main()",
            "",
        ]
    )


def find_socket(unit: str | None) -> Path:
    """The unit's socket; without ``unit``, the only rollingops unit's on this machine."""
    if unit is not None:
        return unit_dir(unit) / SYNC_SOCKET_NAME
    found = sorted(state_base().glob(f"*/{SYNC_SOCKET_NAME}"))
    if len(found) != 1:
        where = ", ".join(path.parent.name for path in found) or "none"
        raise SyncLockUnavailableError(
            f"{len(found)} rollingops units on this machine ({where}): name one with --unit"
        )
    return found[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rollingops-lock", description="Run a command while holding the rollingops lock."
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--unit", help="the rollingops unit whose domain to lock (APP/N)")
    where.add_argument("--socket", type=Path, help="the worker's socket (instead of --unit)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    parser.add_argument("--holder", default="rollingops-lock", help="a label for the logs")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    return parser


def run(argv: list[str]) -> int:
    """Parse, hold, run, release; return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return EXIT_USAGE if stop.code else 0
    command: list[str] = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        socket_path = args.socket or find_socket(args.unit)
        # Inside a hook (a juju-info principal's), it holds the machine lock: say so.
        context: Context = "hook" if os.environ.get("JUJU_CONTEXT_ID") else "command"
        grant = acquire(socket_path, args.timeout, args.holder, context)
    except SyncLockTimeoutError as error:
        return _fail(EXIT_TIMEOUT, f"not granted: {error}")
    except (SyncLockError, ValueError) as error:
        return _fail(EXIT_UNAVAILABLE, f"cannot hold the lock: {error}")
    status = _run_command(command, grant)
    try:
        grant.release()
    except SyncLockLostError as error:
        return _fail(EXIT_LOST, f"{error} (the command exited {status})")
    return status


def _run_command(command: list[str], grant: SyncGrant) -> int:
    """Run ``command`` under a supervisor process; pass SIGTERM/SIGINT on; its exit status.

    The supervisor is a fork of this process without the connection, so that the hold still
    ends with this process, however it ends (see ``_supervise``).
    """
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = EXIT_LOST
        try:
            grant.forget_in_child()
            code = _supervise(command, grant.token, parent)
        finally:
            os._exit(code)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _exit_code(os.waitstatus_to_exitcode(status))


def _exit_code(code: int) -> int:
    """A status as a shell reports it: 128 + N for a process ended by signal N."""
    return 128 - code if code < 0 else code


def _supervise(command: list[str], token: int, parent: int) -> int:
    """In the forked supervisor: run the command in a process group of its own, outlive none of it.

    The supervisor dies with ``rollingops-lock`` (parent-death signal): then the lock is gone,
    and the whole group is killed at once. A signal passed on by a living ``rollingops-lock``
    goes to the whole group, as it would from a terminal. When the command exits, whatever it
    left in its group is ended (SIGTERM, SIGKILL after ``_GRACE`` seconds) before the release.
    The supervisor is a child subreaper, so the group's orphans are its children and are reaped.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:
        return EXIT_LOST  # rollingops-lock died before the parent-death signal was set
    try:
        child = subprocess.Popen(  # argv as given, no shell
            command,
            env={**os.environ, "ROLLINGOPS_TOKEN": str(token)},
            start_new_session=True,
        )
    except OSError as error:
        print(f"rollingops-lock: cannot run {command[0]!r}: {error}", file=sys.stderr)
        return 127

    def on_signal(signum: int, _frame: object) -> None:
        orphaned = os.getppid() != parent
        _signal_group(child.pid, signal.SIGKILL if orphaned else signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    code = _exit_code(child.wait())
    _end_group(child.pid)
    return code


def _end_group(group: int) -> None:
    """End what is left in the command's process group, reaping it, before the release."""
    for sig, grace in ((signal.SIGTERM, _GRACE), (signal.SIGKILL, _GRACE)):
        if not _group_alive(group):
            return
        _signal_group(group, sig)
        deadline = time.monotonic() + grace
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.05)


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` is left (orphans are reaped here first)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


def _fail(code: int, message: str) -> int:
    print(f"rollingops-lock: {message}", file=sys.stderr)
    return code


def main() -> None:
    """Entry point of ``python -m rollingops.lock_command`` and ``rollingops-lock``."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
