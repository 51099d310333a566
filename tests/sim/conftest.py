"""A simulated cluster on a real one-member etcd, stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rollingops_sim.cluster import Cluster
from testbed.etcd import EtcdCluster


def _simulate(etcd: EtcdCluster | None, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    built: list[Cluster] = []

    def build(machines: int, **options: object) -> Cluster:
        cluster = Cluster(tmp_path / f"sim{len(built)}", etcd, **options)  # type: ignore[arg-type]
        built.append(cluster)
        for _ in range(machines):
            cluster.add_machine()
        cluster.settle(timeout=120)  # 6 s when idle; a loaded CI machine took more than 30 s
        return cluster

    yield build
    for cluster in built:
        cluster.close()


@pytest.fixture
def simulate(etcd: EtcdCluster, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``simulate(machines, **options)`` builds a settled cluster on etcd; closed afterwards."""
    yield from _simulate(etcd, tmp_path)


@pytest.fixture
def simulate_without_etcd(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """The same with no etcd at all: the peer backend."""
    yield from _simulate(None, tmp_path)
