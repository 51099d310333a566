"""A simulated cluster on a real one-member etcd, stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster import Cluster
from testbed.etcd import EtcdCluster


@pytest.fixture
def simulate(etcd: EtcdCluster, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``simulate(machines, **options)`` builds a settled cluster; all are closed afterwards."""
    built: list[Cluster] = []

    def build(machines: int, **options: object) -> Cluster:
        cluster = Cluster(tmp_path / f"sim{len(built)}", etcd, **options)  # type: ignore[arg-type]
        built.append(cluster)
        for _ in range(machines):
            cluster.add_machine()
        cluster.settle()
        return cluster

    yield build
    for cluster in built:
        cluster.close()
