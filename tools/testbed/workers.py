"""Worker processes of simulated units on a test-bed etcd, with a fake juju-exec.

Used by the worker tests and by the README's demo, so both drive the real worker the same way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollingops.etcd_client import EtcdClient, EtcdSettings
from rollingops.models import Operation, UnitQueue, utcnow
from rollingops.store import OperationStore
from rollingops.worker import configure_logging
from rollingops.worker_config import WorkerConfig
from testbed.etcd import EtcdCluster

HERE = Path(__file__).parent


def settings_for(cluster: EtcdCluster, **overrides: Any) -> EtcdSettings:
    """Client settings of the application identity the test bed provisioned."""
    return EtcdSettings(
        endpoints=cluster.endpoints,
        ca_file=cluster.ca_file,
        cert_file=cluster.client_cert_file,
        key_file=cluster.client_key_file,
        prefix=cluster.prefix,
        **overrides,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class WorkerFarm:
    """Worker processes of several units sharing one etcd, with a fake juju-exec."""

    cluster: EtcdCluster
    root: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(
        default_factory=dict[str, "subprocess.Popen[bytes]"]
    )

    @property
    def record_file(self) -> Path:
        return self.root / "juju-exec.jsonl"

    def config(self, unit: str, **overrides: Any) -> WorkerConfig:
        runner = self.root / "juju-exec"
        if not runner.exists():
            runner.write_text(
                f'#!/bin/sh\nexec {sys.executable} {HERE / "fake_juju_exec.py"} "$@"\n'
            )
            runner.chmod(0o755)
        values: dict[str, Any] = {
            "unit": unit,
            "charm_dir": self.root / "charm",
            "etcd": settings_for(self.cluster),
            "state_dir": self.root / "state" / unit.replace("/", "-"),
            "hook_runner": runner,
            "lease_ttl": 3,
            "failure_deadline": 3.0,
            **overrides,
        }
        return WorkerConfig(**values)

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    def write_config(self, unit: str, **overrides: Any) -> WorkerConfig:
        """Write the unit's config where the fake juju-exec finds it."""
        config = self.config(unit, **overrides)
        self.configs.mkdir(exist_ok=True)
        (self.configs / f"{unit.replace('/', '-')}.json").write_text(config.model_dump_json())
        return config

    def env(self) -> dict[str, str]:
        """What the fake juju-exec needs, plus a hook context id the worker must drop."""
        return {
            "FAKE_JUJU_RECORD": str(self.record_file),
            "FAKE_JUJU_CONFIGS": str(self.configs),
            "JUJU_CONTEXT_ID": "must-be-removed",
        }

    def start(
        self, unit: str, *, new_session: bool = False, **overrides: Any
    ) -> subprocess.Popen[bytes]:
        """Start the unit's worker.

        ``new_session`` puts it (and the hooks it fires) in a process group of its own, so one
        signal to the group reaches all of them, as on a machine.
        """
        self.write_config(unit, **overrides)
        path = self.configs / f"{unit.replace('/', '-')}.json"
        process = subprocess.Popen(
            [sys.executable, "-m", "rollingops.worker", "--config", str(path)],
            env={**os.environ, **self.env()},
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )
        self.processes[unit] = process
        return process

    def log(self, unit: str) -> list[dict[str, Any]]:
        return read_jsonl(self.root / "state" / unit.replace("/", "-") / "worker.log")

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.record_file)

    def store(self, client: EtcdClient, unit: str) -> OperationStore:
        return OperationStore(client, self.cluster.prefix, unit)

    def enqueue(self, client: EtcdClient, unit: str, *operations: Operation) -> None:
        def add(queue: UnitQueue) -> UnitQueue:
            for operation in operations:
                queue = queue.enqueue(operation)
            return queue

        self.store(client, unit).update(add)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait(timeout=10)


@contextmanager
def worker_logging(unit: str, state_dir: Path) -> Iterator[Path]:
    """The worker's own logging set-up, writing ``state_dir``'s log; yields the log's path.

    For tests of what reads the log (the charm's relay, ``worker_log``): the lines are the
    worker's, through its own formatter. The handler is removed on exit.
    """
    config = WorkerConfig(
        unit=unit,
        charm_dir=state_dir,
        etcd=EtcdSettings(
            endpoints=["127.0.0.1:2379"],
            ca_file=state_dir / "etcd-ca.pem",
            cert_file=state_dir / "client.pem",
            key_file=state_dir / "client.key",
            prefix="/p/",
        ),
        state_dir=state_dir,
    )
    configure_logging(config)
    try:
        yield config.log_file
    finally:
        root = logging.getLogger("rollingops")
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()


def operation(op_id: str, callback: str = "restart", **kwargs: Any) -> Operation:
    return Operation(id=op_id, callback=callback, kwargs=kwargs, requested_at=utcnow())
