"""Pack the two charms the integration suite deploys: rollingops and the demo principal.

    uv run python tests/integration/pack_charms.py rollingops   # prints the .charm's path
    uv run python tests/integration/pack_charms.py principal

rollingops is packed where it lives (``charmcraft pack`` in the project root). The demo
principal cannot be: it imports the library in ``lib/rollingops_principal``, and charmcraft's
uv plugin runs ``uv sync --no-install-project`` in the charm's own tree and copies only its
``src/`` and ``lib/`` into the charm. Rather than keep a second copy of the library in the
repository, ``assemble_principal`` builds a tree under ``build/integration/`` (the demo, with
the library's project as its ``lib/``), locks it there (``uv lock``; the lock is not kept in
the repository) and charmcraft packs that tree.

Only the platform of this host is packed (``ubuntu-24.04-<arch>``): the suite deploys on 24.04.
charmcraft is ``$CHARMCRAFT`` if set, else the one on PATH (the snap), else the project's
pinned one (``uv run charmcraft``, which installs the snap from the store in its build
instance).
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo" / "principal"
LIBRARY = ROOT / "lib"
BUILD = ROOT / "build" / "integration"
PRINCIPAL_TREE = BUILD / "principal"
BASE = "ubuntu@24.04"
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.charm", ".venv", "uv.lock")


def pack_platform() -> str:
    """The charmcraft platform built on and for this host, e.g. ``ubuntu-24.04-amd64``."""
    machine = platform.machine().lower()
    if machine not in _ARCHES:
        raise RuntimeError(f"no charm platform for this host's architecture {machine!r}")
    return f"ubuntu-24.04-{_ARCHES[machine]}"


def rollingops_charm_path() -> Path:
    """Where ``charmcraft pack`` leaves the rollingops charm for this host."""
    return ROOT / f"rollingops_{pack_platform()}.charm"


def principal_charm_path() -> Path:
    """Where ``pack_principal`` leaves the demo principal for this host."""
    return PRINCIPAL_TREE / f"rollingops-demo-principal_{pack_platform()}.charm"


def _charmcraft() -> list[str]:
    if command := os.environ.get("CHARMCRAFT"):
        return shlex.split(command)
    if found := shutil.which("charmcraft"):
        return [found]
    return [_uv(), "run", "--project", str(ROOT), "charmcraft"]


def _uv() -> str:
    found = shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is needed to lock the demo principal (and to run charmcraft)")
    return found


def _run(argv: list[str], cwd: Path) -> None:
    """Run a build step; its output goes to stderr, so that stdout carries only the path."""
    print(f"+ (cd {cwd} && {shlex.join(argv)})", file=sys.stderr, flush=True)
    # uv run exports the project's venv; the assembled tree must resolve on its own.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    subprocess.run(argv, cwd=cwd, env=env, stdout=sys.stderr, check=True)


def _packed(path: Path) -> Path:
    if not path.is_file():
        raise RuntimeError(f"charmcraft finished but {path} is not there")
    return path


def pack_rollingops() -> Path:
    """``charmcraft pack`` in the project root, for this host's platform only."""
    _run([*_charmcraft(), "pack", "--platform", pack_platform()], cwd=ROOT)
    return _packed(rollingops_charm_path())


def assemble_principal(tree: Path = PRINCIPAL_TREE) -> Path:
    """The demo principal's build tree: the demo, the library's project as ``lib/``, a lock.

    The library's ``pyproject.toml`` comes along, so the demo depends on it as a path source
    (``lib``) and uv installs it into the charm's venv with its own dependencies; the copy in
    ``lib/`` is what charmcraft's dispatch puts first on ``PYTHONPATH``. Both are the same
    files, taken from the repository at pack time.
    """
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(DEMO, tree, ignore=_JUNK)
    (tree / "lib").mkdir()
    shutil.copy2(LIBRARY / "pyproject.toml", tree / "lib" / "pyproject.toml")
    shutil.copytree(
        LIBRARY / "rollingops_principal", tree / "lib" / "rollingops_principal", ignore=_JUNK
    )
    _run([_uv(), "lock", "--quiet"], cwd=tree)
    return tree


def pack_principal() -> Path:
    """Assemble the demo principal's tree and ``charmcraft pack`` it there."""
    tree = assemble_principal()
    _run([*_charmcraft(), "pack", "--platform", pack_platform()], cwd=tree)
    return _packed(principal_charm_path())


PACKERS = {"rollingops": pack_rollingops, "principal": pack_principal}


def main(argv: list[str]) -> int:
    """Pack the named charm and print its path (the only line on stdout)."""
    if len(argv) != 1 or argv[0] not in PACKERS:
        print(f"usage: pack_charms.py {{{','.join(PACKERS)}}}", file=sys.stderr)
        return 2
    print(PACKERS[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
