"""Keep one worker process running per unit: a systemd service, or a detached process.

On a real machine the worker is a systemd service (``render_unit_file``) named after the unit,
so several subordinate units on one machine never share a service, a file or a log. Where
systemd is not running (tests, the simulator) the same worker runs as a detached process (new
session, no inherited stdio); its PID file lives in the unit's own state directory and is only
trusted after ``/proc/<pid>/cmdline`` confirms it is our worker with our config file, so a
reused PID is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .worker import EXIT_BAD_CONFIG

SYSTEMD_DIR = Path("/etc/systemd/system")
SYSTEMCTL = "/usr/bin/systemctl"
STOP_TIMEOUT = 15
"""Seconds a stopping worker gets before SIGKILL, under systemd (``TimeoutStopSec``) or not.

On SIGTERM the worker ends its current etcd call (at most 5 s, the worker's bound), ends
its synchronous holds and releases its own slot (calls of 1 s each): about 9 s at worst, with
etcd hung. A ``rollingops-lock`` command that ignores SIGTERM adds its grace
(``command_session.GRACE``, 5 s): about 14 s at worst, 7.5 s measured with the main loop idle.
A SIGKILL instead would leave its keys until the lease TTL; a guarded command is then ended by
its ``rollingops-lock``, which sees the connection end while the command still runs.
"""
RESTART_SECONDS = 5


def service_name(unit: str) -> str:
    """``rollingops-worker-<app>-<n>``: one per unit, as systemd wants it (no ``/``)."""
    return f"rollingops-worker-{unit.replace('/', '-')}"


def systemd_running() -> bool:
    """Whether systemd manages this machine (its runtime directory exists)."""
    return Path("/run/systemd/system").is_dir()


@dataclass(frozen=True)
class WorkerCommand:
    """How to start the worker of one unit."""

    unit: str
    config_file: Path
    python_path: tuple[Path, ...]
    """Directories the worker imports from (the charm's venv, ``src`` and ``lib``)."""
    python: Path = Path(sys.executable)

    def argv(self) -> list[str]:
        """The worker's command line."""
        return [str(self.python), "-m", "rollingops.worker", "--config", str(self.config_file)]

    def environment(self) -> dict[str, str]:
        """``PYTHONPATH`` only: the worker needs nothing else from the hook's environment."""
        return {"PYTHONPATH": ":".join(str(p) for p in self.python_path)}


def _systemd_word(text: str, variables: bool = False) -> str:
    """``text`` as one quoted word of a unit file, taken literally by systemd.

    Unquoted, a space would split it; ``%`` starts a specifier, so it is doubled, and so is
    ``$`` in ``ExecStart`` (``variables``), where it starts a variable (not in ``Environment``).
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"' + (escaped.replace("$", "$$") if variables else escaped) + '"'


def render_unit_file(command: WorkerCommand) -> str:
    """The systemd unit of one worker, and why it restarts as it does.

    - ``Restart=on-failure``: a worker that gave up on etcd (exit 3, after firing
      ``rollingops-etcd-failed``) or crashed comes back after ``RestartSec`` and tries again;
      one stopped by SIGTERM (exit 0: the charm stopped it) stays stopped.
    - ``RestartPreventExitStatus``: a config or credential file it cannot use (exit 2) will not
      become usable by itself; the charm restarts the worker when it writes new ones.
    - ``StartLimitIntervalSec=0``: never give up for good. ``RestartSec`` already bounds the
      rate, and a unit that hit the start limit would refuse even the charm's own ``start``.
    - ``TimeoutStopSec``: ``STOP_TIMEOUT``, the time the worker needs to let go of the lock.
    """
    env = " ".join(_systemd_word(f"{k}={v}") for k, v in command.environment().items())
    exec_start = " ".join(_systemd_word(word, variables=True) for word in command.argv())
    return "\n".join(
        [
            "[Unit]",
            f"Description=rollingops worker of {command.unit}",
            "Wants=network-online.target",
            "After=network-online.target",
            "StartLimitIntervalSec=0",
            "",
            "[Service]",
            f"ExecStart={exec_start}",
            f"Environment={env}",
            "Restart=on-failure",
            f"RestartSec={RESTART_SECONDS}",
            f"RestartPreventExitStatus={EXIT_BAD_CONFIG}",
            "KillSignal=SIGTERM",
            f"TimeoutStopSec={STOP_TIMEOUT}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


class SystemdSupervisor:
    """The worker as a systemd service."""

    def __init__(self, command: WorkerCommand, unit_dir: Path = SYSTEMD_DIR) -> None:
        self._command = command
        self.name = service_name(command.unit)
        self._unit_file = unit_dir / f"{self.name}.service"

    def ensure_running(self, restart: bool = False) -> None:
        """Install or update the unit file, enable it, start it (restart on change)."""
        content = render_unit_file(self._command)
        changed = not self._unit_file.exists() or self._unit_file.read_text() != content
        if changed:
            self._unit_file.write_text(content)
            _systemctl("daemon-reload")
        _systemctl("enable", self.name)
        _systemctl("restart" if changed or restart else "start", self.name)

    def is_running(self) -> bool:
        """Whether systemd reports the service active."""
        done = subprocess.run([SYSTEMCTL, "is-active", "--quiet", self.name], check=False)
        return done.returncode == 0

    def remove(self) -> None:
        """Stop, disable and delete the service."""
        if self._unit_file.exists():
            _systemctl("disable", "--now", self.name)
            self._unit_file.unlink()
            _systemctl("daemon-reload")


def _systemctl(*args: str) -> None:
    subprocess.run([SYSTEMCTL, *args], check=True, capture_output=True, timeout=60)


class ProcessSupervisor:
    """The worker as a detached process, for machines without systemd."""

    def __init__(self, command: WorkerCommand, state_dir: Path) -> None:
        self._command = command
        self._pid_file = state_dir / "worker.pid"

    def ensure_running(self, restart: bool = False) -> None:
        """Start the worker unless it runs; with ``restart``, stop it first."""
        if restart:
            self.remove()
        if self._running_pid() is not None:
            return
        process = subprocess.Popen(
            self._command.argv(),
            env={**os.environ, **self._command.environment()},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        self._pid_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._pid_file.write_text(str(process.pid))

    def is_running(self) -> bool:
        """Whether our worker process is alive."""
        return self._running_pid() is not None

    def remove(self) -> None:
        """SIGTERM the worker (it releases the lock) and wait for it to go."""
        pid = self._running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self._running_pid() == pid and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._running_pid() == pid:
                os.kill(pid, signal.SIGKILL)
        self._pid_file.unlink(missing_ok=True)

    def _running_pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
        ours = str(self._command.config_file).encode() in cmdline
        if zombie or not ours:
            return None
        return pid


Supervisor = SystemdSupervisor | ProcessSupervisor


def supervisor_for(command: WorkerCommand, state_dir: Path) -> Supervisor:
    """Systemd where it runs, a detached process elsewhere."""
    if systemd_running():
        return SystemdSupervisor(command)
    return ProcessSupervisor(command, state_dir)
