"""Fire a custom hook in the worker's own unit through ``juju-exec``.

The command is ``juju-exec -u <unit> "JUJU_DISPATCH_PATH=hooks/<name> <charm_dir>/dispatch"``:
juju-exec takes the command as one string, so the only values in it are a validated hook name
and the quoted dispatch path, never data. ``JUJU_CONTEXT_ID`` is removed from the environment,
otherwise juju-exec would think it runs inside a hook and refuse.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

_POLL = 0.05
_TAIL = 500
"""Bytes of a failed hook's stderr kept in the error (its end: where the reason is)."""


class HookFailedError(Exception):
    """The hook runner exited non-zero or did not finish in time."""


class HookRunner:
    """Runs ``dispatch`` for a named hook of one unit."""

    def __init__(self, runner: Path, unit: str, charm_dir: Path, timeout: float) -> None:
        self._runner = runner
        self._unit = unit
        self._dispatch = charm_dir / "dispatch"
        self._timeout = timeout

    def argv(self, hook: str) -> list[str]:
        """The exact argv, for logs and tests."""
        command = f"JUJU_DISPATCH_PATH=hooks/{hook} {shlex.quote(str(self._dispatch))}"
        return [str(self._runner), "-u", self._unit, command]

    def fire(self, hook: str, stop: threading.Event | None = None) -> None:
        """Run the hook and wait for it; raise ``HookFailedError`` if it fails.

        juju-exec waits for the machine lock. The hook holding that lock may be the one
        stopping this worker (upgrade, fallback, removal), so setting ``stop`` abandons the
        wait at once instead of deadlocking until the stop times out.

        Its stderr goes to a temporary file, not a pipe: a pipe nobody reads while waiting
        fills at 64 KiB, and a hook that says more (a long traceback) blocked on it until
        ``timeout`` killed it, holding the lock all that while.
        """
        env = {k: v for k, v in os.environ.items() if k != "JUJU_CONTEXT_ID"}
        with tempfile.TemporaryFile() as errors:
            try:
                child = subprocess.Popen(
                    self.argv(hook),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                )
            except OSError as error:
                raise HookFailedError(f"{hook}: {error}") from error
            self._wait(hook, child, stop)
            if child.returncode != 0:
                raise HookFailedError(f"{hook}: exit {child.returncode}: {_tail(errors)}")

    def _wait(
        self, hook: str, child: subprocess.Popen[bytes], stop: threading.Event | None
    ) -> None:
        """Wait for ``child``; kill it and raise when stopping or past the hook's timeout."""
        deadline = time.monotonic() + self._timeout
        while child.poll() is None:
            if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                child.kill()
                child.wait()
                raise HookFailedError(f"{hook}: abandoned (stopping or {self._timeout}s passed)")
            time.sleep(_POLL)


def _tail(output: IO[bytes]) -> str:
    """The last ``_TAIL`` bytes written to ``output``, as text."""
    size = output.seek(0, os.SEEK_END)
    output.seek(max(size - _TAIL, 0))
    return output.read().decode(errors="replace")
