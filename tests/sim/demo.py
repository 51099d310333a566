"""The README's main job: a rolling restart of five units, one at a time, on a real etcd.

Each simulated unit runs the real worker process; a fake juju-exec plays the charm and the
principal (it "restarts" for a moment, then reports ``release``). Progress is printed live and a
timeline table at the end. Needs Debian's etcd-server; the peer backend (no etcd) comes with the
cluster simulator.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.etcd import EtcdCluster
from testbed.workers import WorkerFarm, operation, settings_for

from rollingops.etcd_client import EtcdClient

UNITS = [f"app/{n}" for n in range(5)]
RESTART_SECONDS = 0.5


def progress(farm: WorkerFarm, seen: set[tuple[str, str]]) -> None:
    """Print each unit's start and end of restart once, as they happen."""
    for record in farm.records():
        key = (record["unit"], record["event"])
        if record["event"] in {"start", "end"} and key not in seen:
            seen.add(key)
            verb = "restarting" if record["event"] == "start" else "done      "
            print(f"  {record['unit']:<7} {verb} token={record['token']}", flush=True)


def timeline(farm: WorkerFarm, requested: float) -> list[dict[str, Any]]:
    rows = []
    for unit in UNITS:
        records = {r["event"]: r for r in farm.records() if r["unit"] == unit}
        rows.append(
            {
                "unit": unit,
                "waited": records["start"]["ts"] - requested,
                "held": records["end"]["ts"] - records["start"]["ts"],
                "token": records["start"]["token"],
                "backend": "etcd",
            }
        )
    return sorted(rows, key=lambda row: row["token"])


def main() -> int:
    if shutil.which("etcd") is None:
        print("etcd is not installed (apt-get install etcd-server etcd-client).")
        print("The peer backend this demo falls back to comes with the cluster simulator.")
        return 2
    with tempfile.TemporaryDirectory(prefix="rollingops-demo-") as tmp:
        root = Path(tmp)
        with EtcdCluster(1, base_dir=root / "etcd") as cluster:
            farm = WorkerFarm(cluster, root / "farm")
            farm.root.mkdir()
            try:
                return run(farm, cluster)
            finally:
                farm.stop_all()


def run(farm: WorkerFarm, cluster: EtcdCluster) -> int:
    print(f"etcd 3.4 on {cluster.endpoints[0]} (mTLS, client-cert auth, prefix RBAC)")
    for unit in UNITS:
        farm.start(unit)
    print(f"rolling restart of {len(UNITS)} units, at most one at a time:")
    requested = time.time()
    with EtcdClient(settings_for(cluster)) as client:
        for unit in UNITS:
            farm.enqueue(client, unit, operation("restart-1", "restart", hold=RESTART_SECONDS))
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 60
        while len(seen) < 2 * len(UNITS) and time.monotonic() < deadline:
            progress(farm, seen)
            time.sleep(0.05)
    if len(seen) < 2 * len(UNITS):
        print("the rolling restart did not finish within 60 s")
        return 1
    print(f"\n{'unit':<8}{'waited':>9}{'held':>8}{'token':>7}  backend")
    for row in timeline(farm, requested):
        print(
            f"{row['unit']:<8}{row['waited']:>8.2f}s{row['held']:>7.2f}s{row['token']:>7}  "
            f"{row['backend']}"
        )
    print(
        f"total {time.time() - requested:.2f}s for {len(UNITS)} restarts of "
        f"{RESTART_SECONDS}s each"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
