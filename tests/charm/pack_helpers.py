"""Pack the charm with charmcraft from PyPI on this (non-Ubuntu) host, as the packed test needs.

Two parts:

* Helpers for the test (import this module): find the CPython of an Ubuntu base, copy the
  project, run the pack, unpack the ``.charm`` like Juju does, read ``uv.lock``.
* A runner (run this file as a script, arguments as for ``charmcraft``): charmcraft's own
  ``main()`` with exactly two checks bypassed, each replaced by a visible note on stderr:

  - **The host-base check.** In destructive mode craft-application refuses to build when the
    host's ``/etc/os-release`` is not the build base (``LifecycleService._validate_build_plan``,
    its only use of the host distribution; there is no option or environment variable to skip
    it). This host is Debian 12, not Ubuntu 22.04/24.04: the runner replaces that one method
    with one that only notes the mismatch. Nothing else is faked: ``/etc/os-release`` and
    everything that reads it stay as they are.
  - **The build snap** ``astral-uv`` (``build-snaps`` of the uv part). There is no snapd here.
    craft-parts already skips build snaps inside a container (it warns and goes on); elsewhere
    the runner replaces ``craft_parts.packages.snaps.install_snaps``, the one function that
    installs them, with one that checks that every requested snap's command (``uv``) is on
    PATH, where the test puts it. ``charmcraft.yaml`` is used unmodified.

  One thing is *provided*, not bypassed: python-apt, which craft-parts needs for its apt
  backend (build-packages) and which the charmcraft snap bundles but PyPI does not carry.
  Debian's ``python3-apt`` is used: its modules alone are linked into a private directory
  appended to ``sys.path`` (not the whole of Debian's ``dist-packages``).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DEBIAN_DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROVIDED_SNAPS = {"astral-uv": "uv"}
"""Build snaps the test provides as a command on PATH instead."""
BASE_PYTHON = {"22.04": "3.10", "24.04": "3.12"}
"""The CPython each Ubuntu base ships: the charm's venv must be built with it."""
KEPT_UV_VARIABLES = frozenset(
    {
        "UV_CACHE_DIR",
        "UV_INDEX",
        "UV_INDEX_URL",
        "UV_DEFAULT_INDEX",
        "UV_EXTRA_INDEX_URL",
        "UV_FIND_LINKS",
        "UV_INDEX_STRATEGY",
        "UV_KEYRING_PROVIDER",
        "UV_HTTP_TIMEOUT",
        "UV_NATIVE_TLS",
        "UV_SYSTEM_CERTS",
        "UV_OFFLINE",
    }
)
"""How uv reaches the registry; every other UV_* (groups, project, python) is the pack's."""
DROPPED_VARIABLES = frozenset({"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"})
DROPPED_PREFIXES = ("CRAFT_", "SNAP")
"""craft-application's pytest plugin sets CRAFT_DEBUG=1: the pack runs as a user's would."""


# -- python-apt --------------------------------------------------------------------------------


def _python_apt_files() -> list[Path]:
    """Debian's python-apt modules built for the running interpreter, if installed."""
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    extensions = sorted(DEBIAN_DIST_PACKAGES.glob(f"apt_*.{tag}-*.so"))
    if not any(path.name.startswith("apt_pkg.") for path in extensions):
        return []
    packages = [DEBIAN_DIST_PACKAGES / name for name in ("apt", "aptsources")]
    return [*extensions, *(path for path in packages if path.is_dir())]


def python_apt_available() -> bool:
    """Whether the runner can give charmcraft python-apt (installed, or Debian's for us)."""
    try:
        import apt_pkg  # noqa: F401, PLC0415  # pyright: ignore[reportMissingImports, reportUnusedImport]
    except ImportError:
        return bool(_python_apt_files())
    return True


def _provide_python_apt() -> None:
    try:
        import apt_pkg  # noqa: F401, PLC0415  # pyright: ignore[reportMissingImports, reportUnusedImport]
    except ImportError:
        files = _python_apt_files()
        if not files:
            sys.exit("pack_helpers: python-apt is missing (Debian: apt-get install python3-apt)")
        private = Path(tempfile.mkdtemp(prefix="python-apt-"))
        atexit.register(shutil.rmtree, private, ignore_errors=True)
        for path in files:
            (private / path.name).symlink_to(path)
        sys.path.append(str(private))


# -- the runner's two bypasses -------------------------------------------------------------------


def _note(message: str) -> None:
    print(f"pack_helpers: {message}", file=sys.stderr, flush=True)


def _bypass_host_base_check() -> None:
    import craft_platforms  # noqa: PLC0415
    from craft_application.services import lifecycle  # noqa: PLC0415

    service = lifecycle.LifecycleService
    if not callable(getattr(service, "_validate_build_plan", None)):
        sys.exit("pack_helpers: craft-application has no _validate_build_plan to bypass any more")

    def note_host_base(self: Any) -> None:
        wanted = self._build_info.build_base
        host = craft_platforms.DistroBase.from_host()
        if wanted != host:
            _note(f"host {host} stands in for {wanted} (host-base check bypassed)")

    service._validate_build_plan = note_host_base  # pyright: ignore[reportAttributeAccessIssue]


def _provide_snaps_on_path() -> None:
    from craft_parts.packages import snaps  # noqa: PLC0415

    if not callable(getattr(snaps, "install_snaps", None)):
        sys.exit("pack_helpers: craft-parts has no install_snaps to bypass any more")

    def on_path(snaps_list: Iterable[str]) -> list[str]:
        for snap in snaps_list:
            name = re.split(r"[/@]", snap, maxsplit=1)[0]
            command = PROVIDED_SNAPS.get(name)
            if command is None or shutil.which(command) is None:
                sys.exit(f"pack_helpers: build snap {snap!r} is not provided on PATH")
            _note(f"build snap {snap} not installed: {shutil.which(command)} is on PATH")
        return []

    snaps.install_snaps = on_path


def run_charmcraft(argv: list[str]) -> int:
    """charmcraft's ``main()`` with the host-base check and snap installs bypassed."""
    _provide_python_apt()
    _bypass_host_base_check()
    _provide_snaps_on_path()
    from charmcraft.application.main import main  # noqa: PLC0415

    sys.argv = ["charmcraft", *argv]
    return main()


# -- helpers for the test ------------------------------------------------------------------------


def python_version(python: Path) -> str | None:
    """``"3.12"`` for a CPython 3.12; ``None`` if ``python`` does not run."""
    try:
        done = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_python(version: str) -> Path | None:
    """A CPython ``version`` (e.g. "3.12") on this machine, without downloading one.

    uv cannot download interpreters here (python-build-standalone is not on a package
    registry), and pyenv's shims fail uv's own discovery, so the usual places are looked at.
    """
    name = f"python{version}"
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    uv_pythons = Path(
        os.environ.get("UV_PYTHON_INSTALL_DIR", Path.home() / ".local/share/uv/python")
    )

    def by_version(paths: Iterable[Path]) -> list[Path]:
        def key(path: Path) -> tuple[int, ...]:
            numbers = re.findall(r"\d+", path.parent.parent.name)
            return tuple(int(n) for n in numbers)

        return sorted(paths, key=key, reverse=True)

    candidates = [
        *by_version(pyenv.glob(f"versions/{version}.*/bin/{name}")),
        *by_version(uv_pythons.glob(f"cpython-{version}.*/bin/{name}")),
        Path("/usr/bin") / name,
        Path("/usr/local/bin") / name,
    ]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and python_version(candidate) == version:
            return candidate
    return None


def real_uv() -> Path | None:
    """The uv executable itself (``uv run`` says where; a pyenv shim is resolved)."""
    found = os.environ.get("UV") or shutil.which("uv")
    if found is None:
        return None
    path = Path(found)
    if "shims" in path.parts and shutil.which("pyenv"):
        done = subprocess.run(
            ["pyenv", "which", "uv"], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            path = Path(done.stdout.strip())
    return path.resolve()


def copy_project(root: Path, dest: Path) -> None:
    """The project's files as a fresh clone has them (plus untracked ones not ignored).

    Destructive mode builds in the project directory (``parts/``, ``stage/``, ``prime/``): it
    must never run in the checkout itself.
    """
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        dest.mkdir(parents=True)
        for name in sorted(set(listed.stdout.decode().split("\0")) - {""}):
            source = root / name
            if source.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name)
        return
    ignored = (".git", ".venv", "__pycache__", "*.charm", ".*_cache", ".hypothesis", "build")
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns(*ignored))


def pack_environment(bin_dir: Path, private: Path, uv: Path) -> dict[str, str]:
    """The environment of the pack: ours minus the venv and uv settings of ``uv run``.

    PATH is the system's behind ``bin_dir`` (the base's ``python3`` and ``uv``); charmcraft's
    state (log), cache and runtime directories are under ``private``.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in DROPPED_VARIABLES
        and not key.startswith(DROPPED_PREFIXES)
        and (not key.startswith("UV_") or key in KEPT_UV_VARIABLES)
    }
    if "UV_CACHE_DIR" not in env:
        # Downloaded wheels are content-addressed: reusing them hides nothing.
        cache = subprocess.run([str(uv), "cache", "dir"], capture_output=True, text=True)
        if cache.returncode == 0 and cache.stdout.strip():
            env["UV_CACHE_DIR"] = cache.stdout.strip()
    for name in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"):
        directory = private / name.lower()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        env[name] = str(directory)
    env["PATH"] = f"{bin_dir}:{SYSTEM_PATH}"
    env.pop("UV", None)
    return env


def unpack(archive: Path, dest: Path) -> None:
    """Extract a ``.charm`` keeping the file modes, as Juju does (zipfile alone drops them)."""
    with zipfile.ZipFile(archive) as charm:
        for info in charm.infolist():
            target = Path(charm.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o7777
            if mode and not info.is_dir():
                target.chmod(mode)


def executable_in_archive(archive: Path, name: str) -> bool:
    """Whether ``name`` is stored executable in the archive."""
    with zipfile.ZipFile(archive) as charm:
        return bool((charm.getinfo(name).external_attr >> 16) & stat.S_IXUSR)


def archive_names(archive: Path) -> list[str]:
    """Every file name in the archive."""
    with zipfile.ZipFile(archive) as charm:
        return charm.namelist()


# -- uv.lock -------------------------------------------------------------------------------------


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(
    packages: Mapping[str, Mapping[str, Any]], roots: Iterable[Mapping[str, Any]]
) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        dependency = todo.pop()
        name = normalize(dependency["name"])
        package = packages.get(name, {})
        if name not in seen:
            seen.add(name)
            todo.extend(package.get("dependencies", []))
        for extra in dependency.get("extra", []):
            todo.extend(package.get("optional-dependencies", {}).get(extra, []))
    return seen


def locked_closures(lock: Mapping[str, Any], project: str) -> tuple[set[str], set[str]]:
    """(main dependencies, every dependency group) of ``project`` in ``uv.lock``, transitively.

    Markers are ignored: both sets are the largest any platform could install.
    """
    packages = {normalize(p["name"]): p for p in lock["package"]}
    own = packages[normalize(project)]
    main = _closure(packages, own.get("dependencies", []))
    groups = [dep for deps in own.get("dev-dependencies", {}).values() for dep in deps]
    return main, _closure(packages, groups)


def installed_distributions(site_packages: Path) -> set[str]:
    """The normalized names of the distributions installed in ``site_packages``."""
    return {
        normalize(path.name.removesuffix(".dist-info").rsplit("-", 1)[0])
        for path in site_packages.glob("*.dist-info")
    }


if __name__ == "__main__":
    sys.exit(run_charmcraft(sys.argv[1:]))
