"""``rollingops-sim`` as a charm author runs it: a principal charm that is not in this repository.

The charm is written by the test in a temporary directory (the README's author example, which
requests in ``config-changed``); the command runs it through the real subordinate, real workers
and a real etcd, in a process of its own, and its output is read as a person would.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHARM = """
import ops
from rollingops_principal import LockResult, RollingOps


class AuthorCharm(ops.CharmBase):
    def __init__(self, framework):
        super().__init__(framework)
        self.rolling = RollingOps(self, "lock", callbacks={"restart": self._restart})
        framework.observe(self.on.config_changed, self._on_config_changed)

    def _on_config_changed(self, event):
        self.rolling.request("restart", {"reason": "config"})

    def _restart(self, reason):
        return LockResult.RELEASE
"""

METADATA = """
name: author-charm
provides:
  lock:
    interface: rollingops
"""


def simulate(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "rollingops_sim.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == "", "nothing but the simulation is printed"
    return done.stdout


@pytest.fixture
def author_charm(tmp_path: Path) -> Path:
    charm = tmp_path / "author-charm"
    (charm / "src").mkdir(parents=True)
    (charm / "src" / "charm.py").write_text(textwrap.dedent(CHARM))
    (charm / "metadata.yaml").write_text(METADATA)
    return charm


def test_a_charm_from_elsewhere_rolls_one_unit_at_a_time(author_charm):
    out = simulate("--charm", str(author_charm), "--trigger", "config-changed", "--units", "3")
    granted = re.findall(
        r"\+\s*([\d.]+) s\)\s+(rollingops/\d)\s+\S+\s+granted\s+restart token (\d+)", out
    )
    ended = re.findall(r"\+\s*([\d.]+) s\)\s+(rollingops/\d)\s+\S+\s+done", out)
    # config-changed also runs when a machine comes up, before the relation exists: that
    # request is kept and sent, and runs too (or merges with the trigger's, if still waiting).
    assert len(granted) == len(ended) >= 3, out
    assert {unit for _, unit, _ in granted} == {f"rollingops/{n}" for n in range(3)}
    tokens = [int(token) for _, _, token in granted]
    assert tokens == sorted(set(tokens)), "tokens increase in the order printed"
    times = [float(at) for at, _, _ in granted]
    assert times == sorted(times), "lines in the order the events happened"
    starts_and_ends = sorted(
        [(float(a), 1) for a, _, _ in granted] + [(float(a), -1) for a, _ in ended]
    )
    running = peak = 0
    for _, delta in starts_and_ends:
        running += delta
        peak = max(peak, running)
    assert peak == 1, "one at a time"
    assert f"{len(granted)} operations in" in out
    assert "backend now etcd" in out


def test_the_demo_survives_etcd_dying_mid_roll_on_the_peer_backend():
    out = simulate("--units", "3", "--kill-etcd-after", "1", "--kwargs", '{"seconds": 0.2}')
    assert "-- etcd killed --" in out
    assert "3 operations in" in out
    assert "backend now peer" in out


def test_a_directory_without_a_principal_charm_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "rollingops_sim.cli", "--charm", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "src/charm.py does not exist" in done.stderr


CRAFTED_CHARM = """
import ops
from helpers import restart_reason
from rollingops_principal import RollingOps


class Crafted(ops.CharmBase):
    def __init__(self, framework):
        super().__init__(framework)
        self.rolling = RollingOps(self, callbacks={"restart": lambda reason: None})
        framework.observe(self.on.config_changed, self._on_config_changed)
        framework.observe(self.on.data_storage_attached, self._on_storage)

    def _on_storage(self, event):
        pass

    def _on_config_changed(self, event):
        self.rolling.request("restart", {"reason": restart_reason(self.config)})
"""

CHARMCRAFT = """
name: crafted
type: charm
summary: a charm described by charmcraft.yaml alone
description: with storage, a container-scoped endpoint and a module of its own
base: ubuntu@24.04
platforms:
  amd64:
parts:
  charm:
    plugin: uv
provides:
  rollingops:
    interface: rollingops
    scope: container
storage:
  data:
    type: filesystem
    location: /data
config:
  options:
    mode:
      type: string
      default: fast
"""


def test_a_charm_described_by_charmcraft_yaml_with_its_own_modules_and_container_scope(
    tmp_path,
):
    charm = tmp_path / "crafted"
    (charm / "src").mkdir(parents=True)
    (charm / "src" / "charm.py").write_text(textwrap.dedent(CRAFTED_CHARM))
    (charm / "src" / "helpers.py").write_text(
        "def restart_reason(config):\n    return f\"mode {config['mode']}\"\n"
    )
    (charm / "charmcraft.yaml").write_text(CHARMCRAFT)
    out = simulate("--charm", str(charm), "--trigger", "config-changed", "--units", "2")
    assert re.search(r"\n(\d+) operations in", out), out
    assert "backend now etcd" in out


def test_a_charm_that_never_requests_is_told_so_instead_of_waiting_out_the_timeout(tmp_path):
    charm = tmp_path / "lazy"
    (charm / "src").mkdir(parents=True)
    (charm / "src" / "charm.py").write_text(
        "import ops\nfrom rollingops_principal import RollingOps\n\n\n"
        "class Lazy(ops.CharmBase):\n"
        "    def __init__(self, framework):\n"
        "        super().__init__(framework)\n"
        "        self.rolling = RollingOps(self)\n"
    )
    (charm / "metadata.yaml").write_text(METADATA.replace("lock:", "rollingops:"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rollingops_sim.cli",
            "--charm",
            str(charm),
            "--units",
            "1",
            "--trigger",
            "config-changed",
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 1
    assert "no principal requested anything within 15 s of --trigger config-changed" in done.stdout
