"""Two rollingops units on one machine (two principal applications, each with its own rollingops).

They share the machine, its hook lock and ``/var/lib/rollingops``, and one lock domain (the
same ``cluster-id``); each has its own worker, directory, socket and queue. Whatever happens to
one (its worker killed and restarted, its config changed, the unit removed) must leave the
other's holds, worker and files as they were.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rollingops_sim.cluster import COLOCATED, Cluster
from test_rolling import events

from rollingops.lock_command import EXIT_UNAVAILABLE
from rollingops.worker_config import BASE_ENV

A = "rollingops/0"


def lock_command(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    """``rollingops-lock ARGS`` on machine 0, as a script there runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "rollingops.lock_command", *args],
        env={**os.environ, BASE_ENV: str(cluster.state_base(0))},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def worker_pid(cluster: Cluster, unit: str) -> int:
    pid = int((cluster.unit_dir(unit) / "worker.pid").read_text())
    os.kill(pid, 0)  # alive
    return pid


def files_of(directory: Path) -> dict[str, str]:
    """Every file of a unit's directory but its growing log, by digest."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in directory.iterdir()
        if path.is_file() and path.name != "worker.log"
    }


@dataclass(frozen=True)
class Seen:
    """What of unit A another unit must never change."""

    holds: list[tuple[int | None, int, bool]]
    """(token, lease, synchronous) of each of A's keys in the lock queue."""
    worker: int
    files: dict[str, str]
    running: set[str]


def snapshot(cluster: Cluster) -> Seen:
    holds = [(c.token, c.lease, c.priority) for c in cluster.lock_queue() if c.owner == A]
    unit_dir = cluster.unit_dir(A)
    assert (unit_dir / "sync.sock").is_socket()
    return Seen(holds, worker_pid(cluster, A), files_of(unit_dir), cluster.running())


def test_two_units_on_one_machine_never_disturb_each_other(simulate):
    cluster = simulate(1, max_concurrent=2)
    b = cluster.add_colocated(0)
    cluster.settle()
    a_dir, b_dir = cluster.unit_dir(A), cluster.unit_dir(b)
    assert a_dir.parent == b_dir.parent == cluster.state_base(0)
    sockets = (a_dir / "sync.sock", b_dir / "sync.sock")
    cluster.run_until(lambda: all(path.is_socket() for path in sockets), timeout=30)
    assert worker_pid(cluster, A) != worker_pid(cluster, b)

    unnamed = lock_command(cluster, "--timeout", "5", "--", "true")
    _, err = unnamed.communicate(timeout=30)
    assert unnamed.returncode == EXIT_UNAVAILABLE
    assert "2 rollingops units on this machine (rollingops-0, rollingops-b-0)" in err
    assert "--unit" in err

    cluster.request(0, kwargs={"results": [None]})  # A's principal never answers: A holds
    cluster.run_until(lambda: len(events(cluster, "start")) == 1, timeout=60)
    script = lock_command(cluster, "--unit", A, "--timeout", "30", "--", "sleep", "600")
    cluster.run_until(lambda: len(cluster.lock_queue()) == 2, timeout=30)
    cluster.request(0, pair=COLOCATED)  # B's waits behind A's two holds (k = 2)
    cluster.run_until(lambda: b in cluster.contenders(), timeout=30)
    before = snapshot(cluster)
    assert [sync for _, _, sync in before.holds] == [False, True], "A holds twice"

    killed = worker_pid(cluster, b)
    os.kill(killed, signal.SIGKILL)
    cluster.hook(b, "update-status")  # the charm starts B's worker again
    cluster.settle()
    assert snapshot(cluster) == before
    restarted = worker_pid(cluster, b)
    cluster.configure(b, {"lease-ttl": 12})
    cluster.hook(b, "config-changed")  # a new worker config: B's worker restarts
    cluster.settle()
    assert snapshot(cluster) == before
    assert len({killed, restarted, worker_pid(cluster, b)}) == 3, "B's worker was restarted"
    cluster.remove_pair(b)
    assert not b_dir.exists()
    assert snapshot(cluster) == before
    assert script.poll() is None, "A's script still runs under its hold"

    script.send_signal(signal.SIGTERM)
    script.communicate(timeout=30)
    alone = lock_command(cluster, "--timeout", "20", "--", "true")  # one unit left: no --unit
    alone.communicate(timeout=30)
    assert alone.returncode == 0
