"""The worker supervisor: names, the systemd unit, and PID files it must not trust."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollingops.supervisor import (
    ProcessSupervisor,
    WorkerCommand,
    render_unit_file,
    service_name,
)


def command(tmp_path: Path, unit: str = "app/0") -> WorkerCommand:
    config = tmp_path / f"{unit.replace('/', '-')}.json"
    config.write_text("{}")
    return WorkerCommand(unit=unit, config_file=config, python_path=(tmp_path,))


def test_service_names_and_unit_file_are_per_unit(tmp_path):
    assert service_name("my-app/12") == "rollingops-worker-my-app-12"
    text = render_unit_file(command(tmp_path, "my-app/12"))
    assert "Restart=on-failure" in text
    assert f"-m rollingops.worker --config {tmp_path / 'my-app-12.json'}" in text
    assert f'Environment="PYTHONPATH={tmp_path}"' in text


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
