"""``rollingops-lock``: run a command while holding a unit's lock domain, like ``etcdctl lock``.

    rollingops-lock [--unit APP/N | --socket PATH] [--timeout S] [--holder LABEL] -- CMD [ARG...]

For scripts and operators on a machine (cron jobs, maintenance scripts, principals related over
``juju-info`` that cannot use the library); each unit's charm writes a launcher of it, bound to
its socket, as ``/var/lib/rollingops/<app>-<n>/rollingops-lock``. It asks the unit's worker
for a synchronous hold (``sync_server``), runs ``CMD`` with its arguments as given (never
through a shell) with the fencing token in ``ROLLINGOPS_TOKEN``, and releases when the command
exits. Killed itself, its
connection drops and the worker releases; the command is then sent SIGTERM by the kernel (parent
death signal), so it never goes on without the lock. SIGTERM and SIGINT are passed on to the
command, whose end is waited for before the release.

Exit status: the command's own; 75 when the lock was not granted in time; 69 when no worker can
grant it (none on this machine, peer backend, stopping) or it refused; 70 when the lock was lost
while the command ran (the command's status is printed); 64 for a usage error.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from rollingops_principal.errors import (
    SyncLockError,
    SyncLockLostError,
    SyncLockTimeoutError,
    SyncLockUnavailableError,
)
from rollingops_principal.sync_wire import acquire

from .worker_config import SYNC_SOCKET_NAME, state_base, unit_dir

EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69
EXIT_LOST = 70
EXIT_TIMEOUT = 75
_PR_SET_PDEATHSIG = 1


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


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this command dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
        grant = acquire(socket_path, args.timeout, args.holder, "command")
    except SyncLockTimeoutError as error:
        return _fail(EXIT_TIMEOUT, f"not granted: {error}")
    except (SyncLockError, ValueError) as error:
        return _fail(EXIT_UNAVAILABLE, f"cannot hold the lock: {error}")
    status = _run_command(command, grant.token)
    try:
        grant.release()
    except SyncLockLostError as error:
        return _fail(EXIT_LOST, f"{error} (the command exited {status})")
    return status


def _run_command(command: list[str], token: int) -> int:
    """Run ``command`` with the token in its environment; pass SIGTERM/SIGINT on to it."""
    try:
        child = subprocess.Popen(  # argv as given, no shell
            command,
            env={**os.environ, "ROLLINGOPS_TOKEN": str(token)},
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - this process runs no other thread
        )
    except OSError as error:
        print(f"rollingops-lock: cannot run {command[0]!r}: {error}", file=sys.stderr)
        return 127

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail(code: int, message: str) -> int:
    print(f"rollingops-lock: {message}", file=sys.stderr)
    return code


def main() -> None:
    """Entry point of ``python -m rollingops.lock_command`` and ``rollingops-lock``."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
