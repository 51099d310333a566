"""Fault injection on real workers and a real three-member etcd: zero violations allowed.

CI runs one seeded run (``ROLLINGOPS_CHAOS_SEEDS``, ``ROLLINGOPS_CHAOS_SECONDS`` make it a
soak). The report is printed whatever happens, so a failure shows its figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chaos import ChaosConfig, ChaosRun
from testbed.etcd import EtcdCluster

SEEDS = [int(s) for s in os.environ.get("ROLLINGOPS_CHAOS_SEEDS", "20261129").split(",")]
SECONDS = float(os.environ.get("ROLLINGOPS_CHAOS_SECONDS", "40"))


@pytest.mark.cluster
# About two operations are requested a second of faults, and a loaded machine drains each in
# seconds; a stuck lock is caught sooner, by the drain's bound on a time without progress.
@pytest.mark.timeout(SECONDS * 12 + 300)
@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults_never_break_the_lock(etcd_cluster: EtcdCluster, tmp_path: Path, seed):
    run = ChaosRun(etcd_cluster, tmp_path / "chaos", ChaosConfig(seed=seed, seconds=SECONDS))
    try:
        report = run.run()
    finally:
        run.close()
    print("\n".join(report.lines()))
    assert sum(report.faults.values()) >= SECONDS / 4, "too few faults to mean anything"
    assert report.verdict.ok, "\n".join(
        report.verdict.violations
        + report.verdict.lost
        + report.verdict.doubled
        + report.verdict.token_regressions
    )
