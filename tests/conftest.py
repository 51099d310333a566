"""Shared fixtures: real etcd clusters from the test bed, torn down even when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from testbed.etcd import NOT_INSTALLED, EtcdCluster, etcd_installed


def _cluster(size: int, base_dir: Path) -> Iterator[EtcdCluster]:
    """Start a cluster in pytest's tmp dir (kept on failure, logs included) and always stop it."""
    if not etcd_installed():
        pytest.skip(NOT_INSTALLED)
    cluster = EtcdCluster(size, base_dir=base_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def need_etcd() -> None:
    """Skip a test that builds its own ``EtcdCluster`` when the etcd binaries are missing."""
    if not etcd_installed():
        pytest.skip(NOT_INSTALLED)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A one-member etcd, TLS and auth on, one client user limited to ``etcd.prefix``."""
    yield from _cluster(1, tmp_path / "etcd")


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member etcd cluster, provisioned like ``etcd``, for failover tests."""
    yield from _cluster(3, tmp_path / "etcd")
