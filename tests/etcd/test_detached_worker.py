"""The real worker, started detached by the supervisor and stopped by it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from etcd_helpers import wait_until
from test_worker import events

from rollingops.supervisor import ProcessSupervisor, WorkerCommand


def test_detached_worker_runs_in_its_own_session_and_stops_cleanly(farm):
    config = farm.write_config("app/0")
    path = farm.configs / "app-0.json"
    python_path = tuple(Path(p) for p in sys.path if p and Path(p).is_dir())
    supervisor = ProcessSupervisor(WorkerCommand("app/0", path, python_path), config.state_dir)
    supervisor.ensure_running()
    pid = int((config.state_dir / "worker.pid").read_text())
    wait_until(lambda: events(farm, "app/0", "started"), what="worker started")
    supervisor.ensure_running()
    assert int((config.state_dir / "worker.pid").read_text()) == pid
    assert os.getsid(pid) == pid != os.getsid(0)
    supervisor.remove()
    assert not supervisor.is_running()
    assert events(farm, "app/0", "stopped")
