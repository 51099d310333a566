"""A worker restart the charm decides waits for a running ``rollingops-lock`` command.

The real charm (ops.testing in the simulator), real workers on a real etcd, the launcher the
charm wrote: a config change under a hold must not end the hold (another unit would be granted
while the command still runs); the restart follows the command's end by the worker's own cue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from rollingops_sim.cluster import Cluster

HOLDER = "rollingops/0"
OTHER = "rollingops/1"
STAMP = "import sys, time, pathlib; pathlib.Path(sys.argv[1]).write_text(repr(time.time()))"


def worker_pid(cluster: Cluster, unit: str) -> int:
    return int((cluster.unit_dir(unit) / "worker.pid").read_text())


def locked(cluster: Cluster, unit: str, *command: str) -> subprocess.Popen[bytes]:
    """``command`` under ``unit``'s ``rollingops-lock``, the launcher as the charm wrote it."""
    launcher = cluster.unit_dir(unit) / "rollingops-lock"
    return subprocess.Popen([str(launcher), "--timeout", "60", "--", *command])


def test_a_config_change_waits_for_the_running_command_then_restarts_the_worker(
    simulate, tmp_path
):
    cluster = simulate(2)
    sockets = [cluster.unit_dir(unit) / "sync.sock" for unit in (HOLDER, OTHER)]
    cluster.run_until(lambda: all(path.is_socket() for path in sockets), timeout=30)
    ended, started = tmp_path / "ended", tmp_path / "started"
    first = locked(
        cluster, HOLDER, sys.executable, "-c", f"import time; time.sleep(4); {STAMP}", str(ended)
    )
    cluster.run_until(lambda: HOLDER in cluster.contenders(), timeout=30)
    before = worker_pid(cluster, HOLDER)

    cluster.configure(HOLDER, {"lease-ttl": 12})
    cluster.hook(HOLDER, "config-changed")
    assert worker_pid(cluster, HOLDER) == before, "the worker serving the hold was restarted"
    assert "worker restart waits for sync hold by rollingops-lock" in cluster.status(HOLDER)
    second = locked(cluster, OTHER, sys.executable, "-c", STAMP, str(started))

    cluster.run_until(lambda: first.poll() is not None, timeout=60)
    assert first.returncode == 0, "the first command kept its hold to the end"
    cluster.run_until(lambda: second.poll() is not None, timeout=60)
    assert second.returncode == 0
    assert float(started.read_text()) >= float(ended.read_text()), "the holds overlapped"

    def restarted() -> bool:
        return (cluster.unit_dir(HOLDER) / "worker.pid").exists() and worker_pid(
            cluster, HOLDER
        ) != before

    cluster.run_until(restarted, timeout=60)  # the worker's cue: no update-status needed
    cluster.settle()
    assert "worker restart waits" not in cluster.status(HOLDER)
    os.kill(worker_pid(cluster, HOLDER), 0)
    assert time.time() >= float(started.read_text())
