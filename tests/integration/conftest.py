"""Integration tests against a real Juju controller (jubilant). They skip without one.

One command, with a bootstrapped machine controller: ``tests/integration/run.sh`` packs both
charms and runs this suite. By hand: ``ROLLINGOPS_CHARM=... PRINCIPAL_CHARM=... uv run pytest
tests/integration``; without these variables the fixtures take the files ``pack_charms.py``
leaves (rollingops in the project root, the demo principal under ``build/integration/``) and
pack them when they are missing. ``ROLLINGOPS_KEEP_MODEL=1`` keeps the model for a post-mortem.

The controller check comes first, in a session fixture every other fixture depends on, so that
a machine without Juju skips at once and never starts a pack.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import jubilant
import pytest
from pack_charms import (
    pack_principal,
    pack_rollingops,
    principal_charm_path,
    rollingops_charm_path,
)

NO_JUJU = "no juju CLI here: the integration tests need a bootstrapped Juju machine controller"


def _controller_problem() -> str | None:
    """Why no test can reach a controller, or None when one is selected."""
    juju = shutil.which("juju")
    if juju is None:
        return NO_JUJU
    try:
        done = subprocess.run(
            [juju, "show-controller"], capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        return "juju show-controller did not answer in 60 s"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        return f"juju CLI found but no usable controller: {lines[0]}"
    return None


@pytest.fixture(scope="session")
def juju_controller() -> None:
    """Skip (before any packing or model) when no controller can be reached."""
    problem = _controller_problem()
    if problem is not None:
        pytest.skip(problem)


def _charm(variable: str, default: Path, pack: Callable[[], Path]) -> Path:
    """``$variable`` if set (it must exist), else the packed file, packed now if missing."""
    given = os.environ.get(variable)
    if given:
        path = Path(given).resolve()
        if not path.is_file():
            pytest.fail(f"{variable}={given} is not a file")
        return path
    return default if default.is_file() else pack()


@pytest.fixture(scope="session")
def rollingops_charm(juju_controller: None) -> Path:
    """The packed rollingops subordinate for this host's platform."""
    return _charm("ROLLINGOPS_CHARM", rollingops_charm_path(), pack_rollingops)


@pytest.fixture(scope="session")
def principal_charm(juju_controller: None) -> Path:
    """The packed demo principal (its tree assembled with the library, see pack_charms)."""
    return _charm("PRINCIPAL_CHARM", principal_charm_path(), pack_principal)


@pytest.fixture(scope="module")
def juju(juju_controller: None, request: pytest.FixtureRequest) -> Iterator[jubilant.Juju]:
    """A fresh model per module; its debug log is printed when a test of the module failed."""
    keep = os.environ.get("ROLLINGOPS_KEEP_MODEL", "") not in ("", "0")
    with jubilant.temp_model(keep=keep) as model:
        model.wait_timeout = 30 * 60
        failed_before = request.session.testsfailed
        yield model
        if request.session.testsfailed > failed_before:
            print(f"\n--- juju debug-log of model {model.model} ---")
            print(model.debug_log(limit=2000))
