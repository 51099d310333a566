"""Run the chaos suite by hand and print its figures: ``uv run python tests/chaos/run.py``.

``--seeds 1 2 3 --seconds 300`` for a soak. Exits non-zero if any run has a violation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from chaos import ChaosConfig, ChaosRun
from testbed.etcd import EtcdCluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[20261129])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--units", type=int, default=6)
    parser.add_argument("--capacity", type=int, default=1)
    args = parser.parse_args()
    failed = 0
    for seed in args.seeds:
        config = ChaosConfig(seed, args.seconds, args.units, args.capacity)
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp, EtcdCluster(3) as cluster:
            run = ChaosRun(cluster, Path(tmp) / "run", config)
            try:
                report = run.run()
            finally:
                run.close()
        print("\n".join(report.lines()), flush=True)
        failed += not report.verdict.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
