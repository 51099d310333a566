"""Sync lock acquire latency, from idle and under contention, on a real local etcd.

Run ``uv run python bench/sync_lock.py`` (about a minute) or ``--holds 20`` for a quick look.
Real worker processes (the test bed's ``WorkerFarm``, with its fake juju-exec playing the charm)
serve their Unix sockets; this script is the client, through the same ``sync_wire.acquire`` a
charm's ``sync_lock`` uses.

1. ``idle``: one worker, nothing else in the domain: ``acquire`` (connect, request, the worker's
   lease grant, priority entry, pause/floor read, proof) until the grant is in hand, and the
   ``release`` round trip (delete and lease revoke before the worker answers).
2. ``contention``: four workers roll asynchronous operations (each sleeps ``--async-hold``
   seconds in the fake charm, whose hook is a Python process: a whole async hold, from the
   worker's log, is longer) with several always waiting, while the client asks for sync holds
   ``--gap`` seconds apart. With priority the wait is at most what is left of the current async
   hold plus a handoff, whatever the number of waiting async operations (without it, one whole
   hold per waiting operation); the table shows the waits, the waiting count and the async
   holds' lengths.

It prints figures; it never asserts timings.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from lock_handoff import (
    client_settings,
    etcd_cluster,
    ms,
    percentile,
    print_table,
    progress,
)
from rollingops_principal.sync_wire import acquire

from rollingops.control import DomainControl
from rollingops.etcd_client import EtcdClient

UNITS = ("bench/0", "bench/1", "bench/2", "bench/3")


def serving(farm: Any, unit: str) -> Path:
    """Start ``unit``'s worker; its socket once it listens."""
    farm.start(unit)
    path: Path = farm.config(unit).sync_socket
    deadline = time.monotonic() + 30
    while not path.is_socket():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{unit}'s socket never appeared")
        time.sleep(0.02)
    return path


def timed_holds(
    path: Path, holds: int, hold: float, waiting: Any = None, gap: float = 0.0
) -> tuple[list[float], list[float], list[int]]:
    """``holds`` sync holds, ``gap`` s apart: acquire and release latencies, async waiters."""
    acquired: list[float] = []
    released: list[float] = []
    queued: list[int] = []
    for _ in range(holds):
        time.sleep(gap)
        if waiting is not None:
            queued.append(waiting())
        begun = time.monotonic()
        grant = acquire(path, 60, "bench", "command")
        acquired.append(time.monotonic() - begun)
        time.sleep(hold)
        begun = time.monotonic()
        grant.release()
        released.append(time.monotonic() - begun)
    return acquired, released, queued


def row(case: str, acquired: list[float], released: list[float], extra: list[str]) -> list[str]:
    return [
        case,
        str(len(acquired)),
        ms(percentile(acquired, 0.5)),
        ms(percentile(acquired, 0.99)),
        ms(max(acquired)),
        ms(percentile(released, 0.5)),
        *extra,
    ]


def async_holds(farm: Any) -> list[float]:
    """Every asynchronous hold's length, from the workers' logs (acquired -> releasing)."""
    lengths = []
    for unit in UNITS:
        acquired = None
        for entry in farm.log(unit):
            if entry["event"] == "acquired":
                acquired = entry["ts"]
            elif entry["event"] == "releasing" and acquired is not None:
                lengths.append(entry["ts"] - acquired)
                acquired = None
    return lengths


def keep_rolling(farm: Any, client: EtcdClient, stop: threading.Event, hold: float) -> None:
    """Keep every unit's queue non-empty: several async operations always wait."""
    from testbed.workers import operation  # noqa: PLC0415 - only the benchmark needs it

    serial = 0
    while not stop.is_set():
        for unit in UNITS:
            if farm.store(client, unit).load().queue.pending:
                continue
            serial += 1
            farm.enqueue(client, unit, operation(f"op-{serial}", hold=hold, n=serial))
        stop.wait(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holds", type=int, default=100, help="sync holds per case (100)")
    parser.add_argument("--hold", type=float, default=0.01, help="seconds each sync hold lasts")
    parser.add_argument("--async-hold", type=float, default=0.2, help="seconds per async hold")
    parser.add_argument("--members", type=int, default=1, help="etcd members (1)")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between sync asks")
    args = parser.parse_args()
    from testbed.workers import WorkerFarm  # noqa: PLC0415 - only the benchmark needs it

    progress(f"etcd x{args.members}, {platform.python_version()}, {platform.machine()}")
    with etcd_cluster(args.members) as cluster, tempfile.TemporaryDirectory() as tmp:
        farm = WorkerFarm(cluster, Path(tmp))
        client = EtcdClient(client_settings(cluster))
        try:
            sockets = {unit: serving(farm, unit) for unit in UNITS}
            progress("idle")
            idle = timed_holds(sockets[UNITS[0]], args.holds, args.hold)
            progress("contention")
            stop = threading.Event()
            roller = threading.Thread(
                target=keep_rolling, args=(farm, client, stop, args.async_hold), daemon=True
            )
            roller.start()
            time.sleep(1.0)
            control = DomainControl(client, cluster.prefix, 1)

            def waiting() -> int:
                return sum(not c.holding for c in control.contenders())

            busy = timed_holds(sockets[UNITS[0]], args.holds, args.hold, waiting, args.gap)
            stop.set()
            roller.join()
            lengths = async_holds(farm)
        finally:
            client.close()
            farm.stop_all()
    acquired, released, _ = idle
    rows = [row("idle", acquired, released, ["0", "-", "-"])]
    acquired, released, queued = busy
    mean_queued = sum(queued) / len(queued)
    rows.append(
        row(
            "contention",
            acquired,
            released,
            [f"{mean_queued:.1f}", ms(percentile(lengths, 0.5)), ms(max(lengths))],
        )
    )
    print_table(
        f"Sync lock, k = 1, etcd x{args.members}",
        [
            "case",
            "holds",
            "acquire p50 ms",
            "p99 ms",
            "max ms",
            "release p50 ms",
            "async waiting at ask (mean)",
            "async hold p50 ms",
            "async hold max ms",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
