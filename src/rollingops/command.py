"""Run an operator-given command under the lock (the ``run-exclusive`` action).

The command is an argv list, never a shell string: a string given by the operator is split with
``shlex`` and each word passed as is. Output is kept bounded (the tail), since it ends up in
the unit's history.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass

OUTPUT_LIMIT = 4096


@dataclass(frozen=True)
class CommandOutcome:
    """Exit code (``None`` on timeout or start failure) and the tail of the output."""

    exit_code: int | None
    output: str

    @property
    def ok(self) -> bool:
        """Whether the command ran and exited 0."""
        return self.exit_code == 0


def to_argv(command: str | list[str]) -> list[str]:
    """An argv list from a list (as is) or a string (split like a POSIX shell, not run by one)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv or not all(argv):
        raise ValueError("the command must be a non-empty list of non-empty words")
    return argv


def run_command(argv: list[str], timeout: float) -> CommandOutcome:
    """Run ``argv`` without a shell; never raises for the command's own failures."""
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        return CommandOutcome(None, _tail(expired.output) + f"\n[timed out after {timeout}s]")
    except OSError as error:
        return CommandOutcome(None, f"[could not start: {error}]")
    return CommandOutcome(done.returncode, _tail(done.stdout))


def _tail(output: bytes | None) -> str:
    text = (output or b"").decode(errors="replace")
    return text[-OUTPUT_LIMIT:]
