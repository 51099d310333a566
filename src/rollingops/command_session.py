"""The processes of a command that ``rollingops-lock`` runs under the lock, and their end.

The command runs in a session of its own (``setsid``: its session id is its pid), so what it
starts stays in that session wherever it moves in the process tree: into another process group
(a shell's job control), or away from its parent (orphans are re-parented, their session kept).
The session, not the process group and not the tree, is therefore what the lock protects. The
worker, which releases, ends it before it deletes the hold's key (``sync_server``); the launcher
ends it when its worker is gone (``lock_command``).

A process id can be reused once its process is gone, so a session is named by its leader's pid
*and start time*. Linux does not reuse a pid while it is any living process's session id, so:
while the leader lives (same start time) the session is ours; a leader with another start time
means ours ended and the number was reused; with no leader, the processes that have its id and
started no earlier than it are the rest of ours. Every signal goes through a pidfd opened and
checked before it is used, so a pid reused between the scan and the signal is never hit.

Limits: a process that calls ``setsid`` again leaves the session, and nothing here sees it; a
process in uninterruptible sleep outlives SIGKILL until the kernel lets go of it, though it
runs no more code of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

GRACE = 5.0
"""Seconds a process left in a session gets after SIGTERM, before SIGKILL."""
KILL_WAIT = 5.0
"""Seconds to wait for SIGKILLed processes to be gone (they run no code meanwhile)."""
BOUND = GRACE + KILL_WAIT
"""The longest ``Session.end`` takes with the default grace."""
_POLL = 0.05


@dataclass(frozen=True)
class Stat:
    """What ``/proc/<pid>/stat`` says about one process."""

    state: str
    parent: int
    session: int
    start: int
    """Start time, in clock ticks after boot: with the pid, it names a process for good."""


def stat(pid: int) -> Stat | None:
    """The process ``pid`` now, or ``None`` if there is none (a zombie counts as none)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text.rsplit(")", 1)[-1].split()
    if fields[0] in ("Z", "X"):
        return None
    return Stat(
        state=fields[0], parent=int(fields[1]), session=int(fields[3]), start=int(fields[19])
    )


@dataclass(frozen=True)
class Session:
    """A command's session: its leader's pid (the session id) and the leader's start time."""

    leader: int
    start: int

    @classmethod
    def of(cls, leader: int) -> Session | None:
        """The session that ``leader`` leads now, or ``None`` if it leads none."""
        found = stat(leader)
        if found is None or found.session != leader:
            return None
        return cls(leader, found.start)

    def members(self) -> list[int]:
        """Every living process of the session (see the module docstring for pid reuse)."""
        leader = stat(self.leader)
        if leader is not None and leader.start != self.start:
            return []
        return [pid for pid in _pids() if self._holds(pid)]

    def _holds(self, pid: int) -> bool:
        found = stat(pid)
        return found is not None and found.session == self.leader and found.start >= self.start

    def end(self, grace: float = GRACE) -> list[int]:
        """SIGTERM every process of the session, SIGKILL what is left after ``grace`` seconds.

        Returns once none is left, or what is left after the SIGKILL wait (bounded).
        """
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT)):
            left = self.members()
            if not left:
                return []
            for pid in left:
                self._signal(pid, signum)
            deadline = time.monotonic() + wait
            while self.members() and time.monotonic() < deadline:
                time.sleep(_POLL)
        return self.members()

    def _signal(self, pid: int, signum: int) -> None:
        """Signal ``pid`` only if it is still a process of this session (through a pidfd)."""
        try:
            handle = os.pidfd_open(pid)
        except OSError:
            return  # gone already
        try:
            if self._holds(pid):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(handle, signum)
        finally:
            os.close(handle)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
