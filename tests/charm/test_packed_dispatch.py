"""The packed charm's ``dispatch`` reaches the ops code in ``charm/``.

Lays out a charm directory the way charmcraft's uv plugin packs one (the project's wheel and
its dependencies in ``venv/``, ``src/charm.py``, the YAML files, ``dispatch``) and runs hooks
through it, with fake Juju hook tools on PATH that record every call.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKED = Path(__file__).parent / "packed"
TOOLS = (
    "juju-log",
    "config-get",
    "is-leader",
    "relation-ids",
    "action-get",
    "secret-get",
    "status-set",
    "application-version-set",
    "goal-state",
    "juju-reboot",
)


@pytest.fixture(scope="module")
def charm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is needed to build the charm's venv")
    build = tmp_path_factory.mktemp("packed")
    charm = build / "charm"
    (charm / "src").mkdir(parents=True)
    subprocess.run(
        [uv, "build", "--wheel", "-q", "-o", str(build / "dist"), str(ROOT)], check=True
    )
    (wheel,) = (build / "dist").glob("*.whl")
    subprocess.run([uv, "venv", "-q", "-p", "3.11", str(charm / "venv")], check=True)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(charm / "venv" / "bin" / "python"),
            str(wheel),
        ],
        check=True,
    )
    shutil.copy(ROOT / "src" / "charm.py", charm / "src" / "charm.py")
    for name in ("metadata.yaml", "actions.yaml", "config.yaml"):
        shutil.copy(ROOT / name, charm / name)
    shutil.copy(PACKED / "dispatch", charm / "dispatch")
    tools = build / "tools"
    tools.mkdir()
    for tool in TOOLS:
        (tools / tool).symlink_to(PACKED / "hook_tool")
    return charm


def dispatch(charm: Path, hook: str, log: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{charm.parent / 'tools'}:/usr/bin:/bin",
        "JUJU_DISPATCH_PATH": f"hooks/{hook}",
        "JUJU_UNIT_NAME": "rollingops/0",
        "JUJU_CHARM_DIR": str(charm),
        "JUJU_MODEL_NAME": "test",
        "JUJU_MODEL_UUID": "0b8a4a8c-7f5e-4e2a-9d2b-6c1f0f0e0e0e",
        "JUJU_VERSION": "3.6.4",
        "FAKE_HOOK_TOOLS_LOG": str(log),
        "ROLLINGOPS_STATE_DIR": str(charm.parent / "state"),
    }
    return subprocess.run(
        [str(charm / "dispatch")],
        cwd=charm,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_juju_hook_runs_the_charm_in_charm_dir(charm_dir, tmp_path):
    log = tmp_path / "tools.log"
    done = dispatch(charm_dir, "update-status", log)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert (
        "status-set\t--application=False blocked -- no backend: integrate with charmed-etcd"
        in calls
    )


def test_the_workers_custom_hook_reaches_its_handler(charm_dir, tmp_path):
    log = tmp_path / "tools.log"
    done = dispatch(charm_dir, "rollingops-lock-granted", log)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    emitted = calls.index(
        "juju-log\t--log-level DEBUG -- Emitting Juju event rollingops_lock_granted."
    )
    # The handler syncs the queue and publishes to the principal relation.
    assert "relation-ids\trollingops --format=json" in calls[emitted:]
