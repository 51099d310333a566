"""The worker supervisor: names, the systemd unit, and PID files it must not trust."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollingops.supervisor import (
    RESTART_SECONDS,
    STOP_TIMEOUT,
    ProcessSupervisor,
    WorkerCommand,
    render_unit_file,
    service_name,
)
from rollingops.worker import EXIT_BAD_CONFIG, EXIT_ETCD_FAILED


def command(tmp_path: Path, unit: str = "app/0") -> WorkerCommand:
    config = tmp_path / f"{unit.replace('/', '-')}.json"
    config.write_text("{}")
    return WorkerCommand(unit=unit, config_file=config, python_path=(tmp_path,))


def unit_sections(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keys keep their case
    parser.read_string(text)
    return parser


def test_service_names_and_unit_file_are_per_unit(tmp_path):
    assert service_name("my-app/12") == "rollingops-worker-my-app-12"
    text = render_unit_file(command(tmp_path, "my-app/12"))
    config = tmp_path / "my-app-12.json"
    assert f'"--config" "{config}"' in text
    assert f'Environment="PYTHONPATH={tmp_path}"' in text


def test_restart_policy_is_the_documented_one(tmp_path):
    unit = unit_sections(render_unit_file(command(tmp_path)))
    service = unit["Service"]
    assert service["Restart"] == "on-failure"  # SIGTERM (exit 0) stays stopped
    assert service["RestartSec"] == str(RESTART_SECONDS)
    prevented = service["RestartPreventExitStatus"].split()
    assert prevented == [str(EXIT_BAD_CONFIG)], "a bad config is not retried"
    assert str(EXIT_ETCD_FAILED) not in prevented, "a worker that gave up on etcd comes back"
    assert unit["Unit"]["StartLimitIntervalSec"] == "0", "systemd never gives up on it"
    assert service["TimeoutStopSec"] == str(STOP_TIMEOUT)


def test_the_rendered_unit_passes_systemd_analyze_verify(tmp_path):
    """Run by systemd's own parser: a path with a space or a ``%`` is one literal word."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    venv = tmp_path / "venv 100%d" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    worker = WorkerCommand(
        unit="my-app/3",
        config_file=command(tmp_path).config_file,
        python_path=(tmp_path / "site packages",),
        python=venv / "python",
    )
    unit_file = tmp_path / f"{service_name(worker.unit)}.service"
    unit_file.write_text(render_unit_file(worker))
    done = subprocess.run(
        [analyze, "verify", str(unit_file)], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_a_reused_pid_is_never_signalled(tmp_path):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state = tmp_path / "state"
        state.mkdir()
        (state / "worker.pid").write_text(str(stranger.pid))
        supervisor = ProcessSupervisor(command(tmp_path), state)
        assert not supervisor.is_running()
        supervisor.remove()
        time.sleep(0.2)
        assert stranger.poll() is None, "a process that is not our worker was signalled"
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize("content", ["", "not-a-pid", "999999999"])
def test_a_bad_pid_file_means_not_running(tmp_path, content):
    state = tmp_path / "state"
    state.mkdir()
    (state / "worker.pid").write_text(content)
    assert not ProcessSupervisor(command(tmp_path), state).is_running()
