"""Hook executions per operation and per rolling restart, on the cluster simulator.

Each Juju hook takes the machine lock, so hooks are what a rolling operation costs a model.
For N machines (each a demo principal plus a rollingops unit, real charms, real workers, real
etcd) this prints:

- one operation on an idle cluster: hooks on the machine concerned and on every other machine;
- a rolling restart (every principal requests one restart at once): hooks in total, per
  operation, per machine (mean and max), and wall time.

Wall time includes the real execution of every hook by ops.testing (no sleep is modelled; the
restart callback takes 0 s). Hooks run one at a time across the simulated cluster.

    uv run python bench/hooks_per_op.py [--sizes 3 5 10 30]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from rollingops_sim.cluster import Cluster
from testbed.etcd import NOT_INSTALLED, EtcdCluster, etcd_installed

warnings.filterwarnings("ignore", category=UserWarning, module="pydantic")

OLD_PEER_LIBRARY = "4N-3 hooks per operation (65 for a 5-unit rolling restart)"


def old_library_per_op(size: int) -> int:
    """The old peer library's hooks per operation, as measured in its day: 4N - 3."""
    return 4 * size - 3


def machine_of(unit: str) -> int:
    return int(unit.split("/")[1])


def hooks_since(cluster: Cluster, mark: int) -> collections.Counter[int]:
    """Hook executions per machine after timeline index ``mark``."""
    return collections.Counter(machine_of(r.unit) for r in cluster.timeline[mark:])


def ends(cluster: Cluster) -> int:
    return sum(r["event"] == "end" for r in cluster.records())


def measure(size: int, root: Path, etcd: EtcdCluster | None) -> dict[str, float]:
    cluster = Cluster(root / f"sim{size}-{'etcd' if etcd else 'peer'}", etcd)
    try:
        for _ in range(size):
            cluster.add_machine()
        cluster.settle(timeout=600)
        mark = len(cluster.timeline)
        cluster.request(0)
        cluster.run_until(lambda: ends(cluster) == 1, timeout=120)
        cluster.settle(timeout=max(30, 2 * size))
        single = hooks_since(cluster, mark)
        mark = len(cluster.timeline)
        writes_before = cluster.peer_writes.total()
        started = time.monotonic()
        for machine in range(size):
            cluster.request(machine)
        cluster.run_until(lambda: ends(cluster) == 1 + size, timeout=max(600, 20 * size))
        wall = time.monotonic() - started
        cluster.settle(timeout=max(30, 2 * size))
        rolling = hooks_since(cluster, mark)
        writes = cluster.peer_writes.total() - writes_before
    finally:
        cluster.close()
    per_machine = [rolling.get(m, 0) for m in range(size)]
    return {
        "single_here": single.get(0, 0),
        "single_elsewhere": sum(v for m, v in single.items() if m != 0),
        "total": sum(per_machine),
        "per_op": sum(per_machine) / size,
        "machine_mean": sum(per_machine) / size,
        "machine_max": max(per_machine),
        "writes_per_op": writes / size,
        "wall": wall,
    }


def measure_fallback(size: int, root: Path, etcd: EtcdCluster) -> dict[str, float]:
    """Kill etcd after two restarts of a rolling restart; time until the next grant."""
    cluster = Cluster(root / f"fallback{size}", etcd)
    try:
        for _ in range(size):
            cluster.add_machine()
        cluster.settle(timeout=600)
        ops = [cluster.request(machine) for machine in range(size)]
        cluster.run_until(lambda: ends(cluster) >= 2, timeout=120)
        before = len([r for r in cluster.records() if r["event"] == "start"])
        etcd.members[0].kill()
        lost_at = time.time()
        cluster.run_until(
            lambda: len([r for r in cluster.records() if r["event"] == "start"]) > before,
            timeout=300,
        )
        next_grant = (
            next(r["ts"] for r in cluster.records()[::-1] if r["event"] == "start") - lost_at
        )
        cluster.run_until(
            lambda: {r["op"] for r in cluster.records() if r["event"] == "end"} >= set(ops),
            timeout=300,
        )
        ran = {r["op"] for r in cluster.records() if r["event"] == "end"}
    finally:
        cluster.close()
        etcd.members[0].restart()
    return {
        "next_grant": next_grant,
        "lost": len(set(ops) - ran),
        "backend": cluster.backend() or "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 10, 30, 100])
    parser.add_argument(
        "--backends", nargs="+", choices=("etcd", "peer"), default=["etcd", "peer"]
    )
    parser.add_argument("--no-fallback", action="store_true", help="skip the etcd-loss run")
    args = parser.parse_args()
    if not etcd_installed():
        print(NOT_INSTALLED)
        return 2
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="hooks-per-op-") as tmp,
        EtcdCluster(1, base_dir=Path(tmp) / "etcd") as etcd,
    ):
        for size in args.sizes:
            for backend, given in (("etcd", etcd), ("peer", None)):
                if backend not in args.backends:
                    continue
                print(f"N = {size}, {backend} ...", file=sys.stderr, flush=True)
                rows.append((size, backend, measure(size, Path(tmp), given)))
        fallback = None
        if not args.no_fallback:
            print("fallback ...", file=sys.stderr, flush=True)
            fallback = measure_fallback(5, Path(tmp), etcd)
    print_tables(rows, fallback)
    return 0


def print_tables(
    rows: list[tuple[int, str, dict[str, float]]], fallback: dict[str, Any] | None
) -> None:
    print("## Hooks per operation (cluster simulator)\n")
    print(f"- command: {' '.join(['bench/hooks_per_op.py', *sys.argv[1:]])}")
    print("- hooks run for real (ops.testing), one at a time; the restart itself takes 0 s\n")
    print(
        "| N | backend | one op: hooks on its machine | one op: hooks on other machines | "
        "rolling restart: hooks | per op | per op / (N - 1) | old peer library per op | "
        "peer bag writes per op | per machine mean / max | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, backend, r in rows:
        print(
            f"| {size} | {backend} | {r['single_here']} | {r['single_elsewhere']} | "
            f"{r['total']} | {r['per_op']:.1f} | {r['per_op'] / (size - 1):.2f} | "
            f"{old_library_per_op(size) if backend == 'peer' else '-'} | "
            f"{r['writes_per_op']:.2f} | "
            f"{r['machine_mean']:.1f} / {r['machine_max']} | {r['wall']:.2f} |"
        )
    print(
        f"\nTarget (etcd): a constant number of hooks per operation, all on the machine "
        f"concerned (<= 5), none elsewhere. Reference: the old peer library, {OLD_PEER_LIBRARY}."
    )
    if fallback is None:
        return
    print("\n## etcd lost in the middle of a 5-unit rolling restart\n")
    print("| etcd killed -> next grant (under peer) | operations lost | backend after |")
    print("|---|---|---|")
    print(f"| {fallback['next_grant']:.1f} s | {fallback['lost']} | {fallback['backend']} |")


if __name__ == "__main__":
    sys.exit(main())
