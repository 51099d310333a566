"""etcd lost and back again and again during a rolling restart, with scripts holding the lock
synchronously (``rollingops-lock``) and an operator's pause in flight (simulator, real etcd).

Two short outages (within ``etcd-failure-deadline``: the workers wait; the domain paused across
the second) and a long one (past it: the application falls back to the peer backend, then
returns to etcd). Whatever ran under
the lock, asynchronous operation or script, at most ``max-concurrent`` (1) ran at once; every
operation ran exactly once; fencing tokens rose in the order the holds began.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rollingops_sim.cluster import Cluster
from test_rolling import events, max_overlap, request_in_order

from rollingops.lock_command import EXIT_LOST, EXIT_TIMEOUT, EXIT_UNAVAILABLE
from rollingops.worker_config import BASE_ENV

SCRIPT = """
import json, os, sys, time
def say(event):
    with open(sys.argv[1], "a") as out:
        line = {"ts": time.time(), "event": event, "token": int(os.environ["ROLLINGOPS_TOKEN"])}
        out.write(json.dumps(line) + "\\n")
say("start")
time.sleep(0.3)
say("end")
"""
"""The command a script runs under the lock: records its hold with the fencing token."""


class Scripts:
    """A cron-like script on each of some machines: hold, run, wait 1.5 s, again."""

    def __init__(self, cluster: Cluster, machines: tuple[int, ...]) -> None:
        self.record = cluster.root / "scripts.jsonl"
        self.exits: list[int] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(cluster, m), daemon=True) for m in machines
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self, cluster: Cluster, machine: int) -> None:
        argv = [sys.executable, "-m", "rollingops.lock_command", f"--unit=rollingops/{machine}"]
        argv += ["--timeout=5", "--", sys.executable, "-c", SCRIPT, str(self.record)]
        env = {**os.environ, BASE_ENV: str(cluster.state_base(machine))}
        while not self._stop.wait(1.5):
            done = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=60)
            self.exits.append(done.returncode)

    def stop(self) -> list[dict[str, Any]]:
        """Stop the loops; what the scripts recorded."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)
        return read_jsonl(self.record)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_for(cluster: Cluster, seconds: float, backends: set[str | None]) -> None:
    """Let the simulation run (hooks, workers) for ``seconds``; note each backend it used."""
    end = time.monotonic() + seconds

    def over() -> bool:
        backends.add(cluster.backend())
        return time.monotonic() > end

    cluster.run_until(over, timeout=seconds + 60)


def holds(starts: list[dict[str, Any]], ends: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(start, end) of each hold, paired in order."""
    return [(s["ts"], e["ts"]) for s, e in zip(starts, ends, strict=True)]


def test_etcd_lost_again_and_again_with_scripts_and_a_pause_keeps_every_rule(simulate):
    cluster = simulate(4)
    scripts = Scripts(cluster, (1, 3))
    ops = [  # distinct kwargs: a request equal to a waiting one would be merged into it
        *request_in_order(cluster, range(4), seconds=0.5, round=1),
        *request_in_order(cluster, range(4), seconds=0.5, round=2),
    ]
    member, backends = cluster.etcd.members[0], set[str | None]()
    paused = resumed = 0.0
    for n, outage in enumerate((2.0, 2.0, None)):
        run_for(cluster, 1.5, backends)
        member.kill()
        if outage is None:  # past etcd-failure-deadline (5 s), until the application falls back
            cluster.run_until(lambda: cluster.backend() == "peer", timeout=60)
        else:
            run_for(cluster, outage, backends)
        member.restart()
        cluster.update_status()
        run_for(cluster, 1.0, backends)
        if n == 0:  # paused across the next outage
            cluster.action("rollingops/0", "pause", {"reason": "maintenance"})
            paused = time.time()
        elif n == 1:
            resumed = time.time()
            cluster.action("rollingops/0", "resume")
    cluster.run_until(lambda: len(events(cluster, "end")) >= len(ops), timeout=120)
    cluster.update_status()
    cluster.run_until(lambda: cluster.backend() == "etcd", timeout=60)
    run_for(cluster, 3.0, backends)  # scripts hold on etcd again
    recorded = scripts.stop()
    assert backends == {"etcd", "peer"}

    starts, ends = events(cluster, "start"), events(cluster, "end")
    assert sorted(r["op"] for r in ends) == sorted(ops), "each operation ended exactly once"
    assert sorted(r["op"] for r in starts) == sorted(ops), "none ran twice"
    assert events(cluster, "lost") == []
    script_starts = [r for r in recorded if r["event"] == "start"]
    script_ends = [r for r in recorded if r["event"] == "end"]
    assert 0 in scripts.exits, "scripts held the lock too"
    assert set(scripts.exits) <= {0, EXIT_UNAVAILABLE, EXIT_LOST, EXIT_TIMEOUT}
    everything = holds(starts, ends) + holds(script_starts, script_ends)
    assert max_overlap([("", a, b) for a, b in everything]) == 1
    # A pause stops grants, not holders: a grant made just before it may reach its callback
    # (a hook later) after it, so grants are what is checked, at the workers.
    granted = [
        entry
        for log in cluster.worker_logs().values()
        for entry in log
        if entry["event"] in ("granted", "sync-granted")
    ]
    assert not [r for r in granted if paused < r["ts"] < resumed], "nothing granted while paused"
    began = sorted(starts + script_starts, key=lambda r: r["ts"])
    tokens = [r["token"] for r in began]
    assert tokens == sorted(set(tokens)), "tokens rise in the order the holds began"
