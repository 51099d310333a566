"""A worker killed while its callback runs: the same attempt again, told as a re-run.

What CI's chaos seed 20261129 showed (app/4 SIGKILLed during op4's callback, op4 attempt 1
started twice), on its own: one real worker on real etcd, its process group SIGKILLed in the
callback and restarted as systemd would, then the checker's verdict on what was recorded.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from chaos import holds
from checker import judge
from etcd.etcd_helpers import wait_until
from testbed.etcd import EtcdCluster
from testbed.workers import WorkerFarm, operation, settings_for

from rollingops.etcd_client import EtcdClient
from rollingops.models import CompletedOperation


def crash_in_the_callback(farm: WorkerFarm) -> tuple[CompletedOperation, dict[str, list[float]]]:
    """op4 on app/4, its worker SIGKILLed with the callback, restarted; op4's end, the kill."""
    worker = farm.start("app/4", new_session=True)
    with EtcdClient(settings_for(farm.cluster)) as client:
        farm.enqueue(client, "app/4", operation("op4", hold=2.0))
        wait_until(lambda: any(r["event"] == "start" for r in farm.records()), what="started")
        kills = {"app/4": [time.time()]}
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and the callback it runs
        worker.wait(timeout=10)
        farm.start("app/4", new_session=True)
        history = lambda: farm.store(client, "app/4").load().queue.history  # noqa: E731
        (entry,) = wait_until(history, timeout=60, what="op4 ended")
    return entry, kills


def test_a_callback_cut_by_a_crash_runs_again_as_a_told_rerun(etcd: EtcdCluster, tmp_path: Path):
    farm = WorkerFarm(etcd, tmp_path)
    try:
        entry, kills = crash_in_the_callback(farm)
    finally:
        farm.stop_all()
    first, again = [r for r in farm.records() if r["event"] == "start"]
    assert (first["attempt"], first["rerun"]) == (1, False)
    assert (again["attempt"], again["rerun"]) == (1, True), "the same attempt, told"
    assert again["token"] > first["token"]
    assert (entry.outcome.value, entry.attempts) == ("done", 1), "a crash is not a retry"
    verdict = judge(
        holds(farm.records(), kills, {}), 1, {}, {"op4"}, {"op4": ["done"]}, kills=kills
    )
    assert verdict.ok, verdict.summary()
    unmarked = judge(holds(farm.records(), {}, {}), 1, {}, {"op4"}, {"op4": ["done"]}, kills={})
    assert unmarked.doubled == ["op4 attempt 1 started 2 times"], "without the kill: run twice"
