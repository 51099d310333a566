"""``rollingops-lock``: run a command while holding a unit's lock domain, like ``etcdctl lock``.

    rollingops-lock [--unit APP/N | --socket PATH] [--timeout S] [--holder LABEL] -- CMD [ARG...]

For scripts and operators on a machine (cron jobs, maintenance scripts, principals related over
``juju-info`` that cannot use the library); each unit's charm writes a launcher of it, bound to
its socket, as ``/var/lib/rollingops/<app>-<n>/rollingops-lock``. It asks the unit's worker
for a synchronous hold (``sync_server``), runs ``CMD`` with its arguments as given (never
through a shell) with the fencing token in ``ROLLINGOPS_TOKEN``, and releases when the command
exits.

The promise: at no instant does the command (or anything it started) run while the lock is
held elsewhere, whatever kills this process or its process group. Only the worker can keep it,
since it is the one that releases and the one process that signals to the caller's group never
reach. So the command runs in a session of its own (a forked child calls ``setsid``), and before
it may ``exec``, this process has the worker *guard* that session: the worker then ends every
process of it before it deletes the hold's key, however the hold ends (``command_session``).
The child waits for a go on a socket pair; if this process dies first, the child reads the end
of the pair and exits without running anything. There is no supervisor process beside the
command any more: the worker does what it did (end the command when ``rollingops-lock`` dies,
see its orphans), from outside the caller's process group, where a group's SIGKILL cannot stop
it.

While the command runs, SIGHUP, SIGINT, SIGQUIT and SIGTERM are passed on to its process group,
as a terminal would, and its end is waited for before the release. When the worker ends the
hold first (lease lost, key force-released, worker stopping), it says so and SIGTERMs the
command at once (SIGKILL after ``command_session.GRACE`` seconds); this process then exits 70.
If the worker dies without a word, its lease frees the lock after two thirds of its TTL at the
earliest: this process ends the command's session itself, within ``_ORPHAN_GRACE``. If it
lives but stops refreshing the lease (paused), its renewals (``valid``, until when the lease
cannot expire) stop coming: the session is ended here before that time.

Exit status: the command's own (128 + N if signal N ended it); 64 for a usage error (a bad
option or value, with the reason); 75 when the lock was not granted in time; 69 when no worker
can grant it (none on this machine, peer backend, stopping), it refused, or it cannot guard the
command (the command then never ran); 70 when the lock was lost while the command ran (the
command's status is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from pydantic import TypeAdapter, ValidationError
from rollingops_principal.errors import (
    SyncLockError,
    SyncLockLostError,
    SyncLockTimeoutError,
    SyncLockUnavailableError,
)
from rollingops_principal.sync_wire import Context, SyncGrant, acquire, request

from .command_session import Session
from .worker_config import SYNC_SOCKET_NAME, UnitName, state_base, unit_dir

EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69
EXIT_LOST = 70
EXIT_TIMEOUT = 75
_FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
_READY = b"r"
"""Child to parent: I lead my own session now."""
_GO = b"g"
"""Parent to child: the worker guards your session, run the command."""
_ORPHAN_GRACE = 1.0
"""Seconds the command gets after SIGTERM when its worker died; below 2/3 of the least TTL."""
_KILL_MARGIN = 0.25
"""Seconds before the hold's lease may expire by which a mute worker's command is SIGKILLed."""
_RESUMED = 1.0
"""Seconds a stopped-then-resumed ``rollingops-lock`` waits for a fresh renewal."""
_OVERSLEPT = 0.2
"""Seconds past its own deadline by which this process counts as having been stopped."""
_OVERDUE = "the worker did not renew the hold in time (paused or starved): its lease may expire"
_UNIT: TypeAdapter[str | None] = TypeAdapter(UnitName | None)


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
    # Inside a hook (a juju-info principal's), it holds the machine lock: say so.
    context: Context = "hook" if os.environ.get("JUJU_CONTEXT_ID") else "command"
    if (usage := _usage_error(args, context)) is not None:
        return _fail(EXIT_USAGE, usage)
    try:
        socket_path = args.socket or find_socket(args.unit)
        grant = acquire(socket_path, args.timeout, args.holder, context)
    except SyncLockTimeoutError as error:
        return _fail(EXIT_TIMEOUT, f"not granted: {error}")
    except SyncLockError as error:
        return _fail(EXIT_UNAVAILABLE, f"cannot hold the lock: {error}")
    return _run_under(grant, command)


def _usage_error(args: argparse.Namespace, context: Context) -> str | None:
    """What is wrong with the options, before any worker is asked (exit 64, not 69)."""
    try:
        request(args.timeout, args.holder, context)
    except ValueError as error:
        return str(error)
    try:
        _UNIT.validate_python(args.unit)
    except ValidationError:
        return f"invalid --unit {args.unit!r}: expected APP/N"
    return None


def _run_under(grant: SyncGrant, command: list[str]) -> int:
    """Run ``command`` under the hold ``grant``, then release it; the exit status."""
    try:
        status, lost = _run_command(command, grant)
    except SyncLockError as error:
        with contextlib.suppress(SyncLockError):
            grant.release()
        return _fail(EXIT_UNAVAILABLE, f"the command did not run: {error}")
    try:
        grant.release()
    except SyncLockLostError as error:
        lost = lost or str(error)
    if lost is not None:
        return _fail(EXIT_LOST, f"the lock was lost: {lost} (the command exited {status})")
    return status


def _run_command(command: list[str], grant: SyncGrant) -> tuple[int, str | None]:
    """Start ``command`` once the worker guards it, wait for its end; its status, and a loss.

    ``SyncLockError`` if the worker would not guard it: then it never ran.
    """
    channel, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        channel.close()
        grant.forget_in_child()
        _command_child(command, grant.token, theirs)
    theirs.close()
    with channel:
        session, until = _guarded(pid, channel, grant)
        forwarding = {sig: signal.signal(sig, _forward_to(pid)) for sig in _FORWARDED}
        with contextlib.suppress(OSError):
            channel.sendall(_GO)  # a child killed meanwhile is waited for below
    try:
        return _wait(pid, session, grant, until)
    finally:
        for sig, handler in forwarding.items():
            signal.signal(sig, handler)


def _guarded(pid: int, channel: socket.socket, grant: SyncGrant) -> tuple[Session, float | None]:
    """Wait for the child to lead its own session, and have the worker guard that session.

    The session, and until when the worker says the hold is certain. On failure the child is
    reaped: closing the channel without the go makes it exit unrun.
    """
    session = Session.of(pid) if channel.recv(1) == _READY else None
    try:
        if session is None:
            raise SyncLockError("the command's process could not start a session")
        until = grant.guard(session.leader, session.start)
    except SyncLockError:
        channel.close()
        os.waitpid(pid, 0)
        raise
    return session, until


def _command_child(command: list[str], token: int, channel: socket.socket) -> NoReturn:
    """In the forked child: lead a new session, wait for the go, become the command.

    Without the go (``rollingops-lock`` died, or the worker would not guard), it exits
    without ever running the command: an unguarded command never runs.
    """
    code = 127
    try:
        os.setsid()
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # as Python found them, as subprocess does
            signal.signal(sig, signal.SIG_DFL)
        channel.sendall(_READY)
        if channel.recv(1) != _GO:
            code = EXIT_LOST
        else:
            channel.close()
            environment = {**os.environ, "ROLLINGOPS_TOKEN": str(token)}
            os.execvpe(command[0], command, environment)  # noqa: S606 - argv as given, no shell
    except OSError as error:
        print(f"rollingops-lock: cannot run {command[0]!r}: {error}", file=sys.stderr)
    finally:
        os._exit(code)


def _forward_to(pid: int) -> Callable[[int, object], None]:
    """A handler passing the signal on to the command's process group, as a terminal would."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    return forward


def _wait(
    pid: int, session: Session, grant: SyncGrant, until: float | None
) -> tuple[int, str | None]:
    """Wait for the command's end, listening to the worker meanwhile; its status and a loss.

    The worker's ``lost`` notice comes with its SIGTERM to the command. If the worker itself
    goes without a word (killed), its lease will soon free the lock: the command's session is
    ended here, within ``_ORPHAN_GRACE``, which is below the earliest expiry. The connection
    is listened to after a notice too: a worker closes it only once the command's session is
    gone, so its end while the command still runs means the worker died during the command's
    SIGTERM grace (systemd's SIGKILL at ``TimeoutStopSec``, say), and only this process is
    left to end the command before the lease frees the lock. A worker that is alive but no
    longer refreshes the lease (SIGSTOPped, starved) says nothing at all: ``until``, renewed
    by its ``valid`` lines, is when the lease may expire, and the command is ended before it.
    """
    lost: str | None = None
    listening = True
    certain = _Certain.of(until)
    done = os.pidfd_open(pid)
    try:
        while True:
            waiting = [done, grant] if listening else [done]
            ready = select.select(waiting, [], [], certain.wait() if listening else None)[0]
            if done in ready:
                break
            if not ready:  # no renewal in time: the lease may expire, the worker is mute
                lost, listening = lost or _OVERDUE, False
                session.end(certain.grace())
                continue
            try:
                reply = grant.notice()
            except SyncLockLostError as error:  # the worker died: within the lease's end
                lost, listening = lost or str(error), False
                session.end(certain.grace())
                continue
            if reply.outcome == "valid":
                certain = certain.renewed(reply.until)
            else:  # lost: the worker ends the command; only its death is left to watch for
                lost, certain = lost or reply.lost or reply.message or reply.outcome, _UNBOUND
    finally:
        os.close(done)
    _, status = os.waitpid(pid, 0)
    return _exit_code(os.waitstatus_to_exitcode(status)), lost


@dataclass(frozen=True)
class _Certain:
    """Until when the worker says the hold is certain (its lease's expiry), and since when."""

    until: float | None
    """``CLOCK_MONOTONIC``; ``None``: no bound (a worker that does not say, or one that ends)."""
    learnt: float

    @classmethod
    def of(cls, until: float | None) -> _Certain:
        """The bound a line gave, read now."""
        return cls(until, time.monotonic())

    def renewed(self, until: float | None) -> _Certain:
        """The bound a ``valid`` line gives, read now.

        Read in time, a line is the worker's word, even one whose end is near: the command is
        gone by then. Read only after this process overslept its own deadline (stopped by ^Z,
        a frozen machine), a line already at its end is the worker's last word before that
        pause: it sent nothing after it that was not read, and sends the newest as soon as
        this one is. ``_RESUMED`` gives it that long, and only then.
        """
        now = time.monotonic()
        overslept = self.until is not None and now > self._overdue_at() + _OVERSLEPT
        if overslept and until is not None and until - _KILL_MARGIN <= now:
            until = now + _RESUMED + _KILL_MARGIN
        return _Certain(until, now)

    def _overdue_at(self) -> float:
        """When to start ending the command if no renewal came.

        Early enough that its SIGKILL lands ``_KILL_MARGIN`` before ``until``; never before 60 %
        of the time left, since the next renewal comes a third of the TTL after the last.
        """
        assert self.until is not None  # noqa: S101 - only with a bound
        left = self.until - self.learnt
        return max(self.until - _ORPHAN_GRACE - _KILL_MARGIN, self.learnt + 0.6 * left)

    def wait(self) -> float | None:
        """Seconds ``select`` may wait for a renewal (``None``: as long as it takes)."""
        if self.until is None:
            return None
        return max(self._overdue_at() - time.monotonic(), 0.0)

    def grace(self) -> float:
        """The SIGTERM grace that still ends the command ``_KILL_MARGIN`` before ``until``.

        At most ``_ORPHAN_GRACE``: a dead worker's lease may expire two thirds of its TTL after
        the death, ``until`` or not (the least TTL, 2 s: 1.3 s).
        """
        if self.until is None:
            return _ORPHAN_GRACE
        return min(max(self.until - _KILL_MARGIN - time.monotonic(), 0.0), _ORPHAN_GRACE)


_UNBOUND = _Certain(None, 0.0)


def _exit_code(code: int) -> int:
    """A status as a shell reports it: 128 + N for a process ended by signal N."""
    return 128 - code if code < 0 else code


def _fail(code: int, message: str) -> int:
    print(f"rollingops-lock: {message}", file=sys.stderr)
    return code


def main() -> None:
    """Entry point of ``python -m rollingops.lock_command`` and ``rollingops-lock``."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
