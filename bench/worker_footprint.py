"""The worker's footprint: RSS, threads and CPU per minute, idle, waiting and holding.

Run ``uv run python bench/worker_footprint.py`` (about 2 minutes; ``--seconds`` per state, 30).
Real ``python -m rollingops.worker`` processes (the test bed's ``WorkerFarm``, its fake juju-exec
playing the charm) on a one-member test-bed etcd; figures from ``/proc/<pid>``: ``VmRSS`` and
``Threads`` at the end of each window, CPU as user + system ticks over the window.

- ``idle``: nothing queued (one watch open, no lease).
- ``waiting``: its operation queued behind another unit's, which holds for the whole window.
- ``holding``: its own operation granted, the fake charm holding for the whole window.

It prints figures; it never asserts them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from lock_handoff import etcd_cluster, print_table, progress
from testbed.workers import WorkerFarm, operation, settings_for

from rollingops.etcd_client import EtcdClient

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> tuple[int, int, float]:
    """RSS (KiB), threads, and CPU seconds so far of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    rss = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"])
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
    return rss, threads, cpu


def window(pid: int, seconds: float) -> list[str]:
    """One row: RSS and threads at the end, CPU per minute over the window."""
    _, _, before = sample(pid)
    time.sleep(seconds)
    rss, threads, after = sample(pid)
    per_minute = (after - before) * 60 / seconds
    return [f"{rss / 1024:.1f}", str(threads), f"{per_minute:.2f}"]


def wait_for(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per state (30)")
    args = parser.parse_args()
    rows = []
    with etcd_cluster(1) as cluster, tempfile.TemporaryDirectory() as tmp:
        farm = WorkerFarm(cluster, Path(tmp))
        try:
            client = EtcdClient(settings_for(cluster))
            measured = farm.start("bench/0").pid
            farm.start("bench/1")
            time.sleep(3)  # start-up done: imports, first read, watch
            progress("idle")
            rows.append(["idle", *window(measured, args.seconds)])
            progress("waiting")
            farm.enqueue(client, "bench/1", operation("blocker", hold=args.seconds * 2 + 10))
            wait_for(lambda: any(r["event"] == "start" for r in farm.records()), "blocker")
            farm.enqueue(client, "bench/0", operation("mine", hold=args.seconds + 10))
            time.sleep(2)
            rows.append(["waiting", *window(measured, args.seconds)])
            progress("holding")
            wait_for(
                lambda: any(r["event"] == "start" and r["op"] == "mine" for r in farm.records()),
                "own grant",
                timeout=args.seconds * 2 + 30,
            )
            rows.append(["holding", *window(measured, args.seconds)])
            client.close()
        finally:
            farm.stop_all()
    print_table(
        f"Worker footprint ({args.seconds:.0f} s per state, one-member etcd)",
        ["state", "RSS MiB", "threads", "CPU s/min"],
        rows,
    )


if __name__ == "__main__":
    main()
