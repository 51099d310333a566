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
from pathlib import Path


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

    def fire(self, hook: str) -> None:
        """Run the hook and wait for it; raise ``HookFailedError`` if it fails."""
        env = {k: v for k, v in os.environ.items() if k != "JUJU_CONTEXT_ID"}
        try:
            done = subprocess.run(
                self.argv(hook),
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self._timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise HookFailedError(f"{hook}: {error}") from error
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace")[-500:]
            raise HookFailedError(f"{hook}: exit {done.returncode}: {tail}")
