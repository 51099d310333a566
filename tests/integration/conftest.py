"""Integration tests against a real Juju controller (jubilant). They skip without ``juju``.

Run with a bootstrapped machine controller and a packed charm:
``ROLLINGOPS_CHARM=./rollingops_ubuntu-24.04-amd64.charm uv run pytest tests/integration``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import jubilant
import pytest


@pytest.fixture(scope="module")
def juju() -> Iterator[jubilant.Juju]:
    if shutil.which("juju") is None:
        pytest.skip("no juju CLI here: integration tests need a real Juju controller")
    with jubilant.temp_model() as model:
        model.wait_timeout = 20 * 60
        yield model


@pytest.fixture(scope="module")
def charm() -> Path:
    packed = os.environ.get("ROLLINGOPS_CHARM")
    if not packed:
        pytest.skip("set ROLLINGOPS_CHARM to the packed .charm file")
    return Path(packed)
