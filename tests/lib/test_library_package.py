"""The principal library builds as its own package, with the version and files it claims."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import rollingops_principal

LIB = Path(__file__).resolve().parents[2] / "lib"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    uv = shutil.which("uv")
    assert uv, "uv builds the library"
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([uv, "build", str(LIB), "--wheel", "--out-dir", str(out)], check=True)
    (built,) = out.glob("rollingops_principal-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_carries_the_version_of_the_package_and_only_the_library(wheel):
    names = wheel.namelist()
    version = rollingops_principal.__version__
    metadata = wheel.read(f"rollingops_principal-{version}.dist-info/METADATA").decode()
    assert f"Version: {version}" in metadata
    assert "Requires-Dist: ops" in metadata
    assert "Requires-Dist: pydantic" in metadata
    modules = {name for name in names if name.endswith(".py")}
    assert {
        "rollingops_principal/rollingops.py",
        "rollingops_principal/sync_wire.py",
        "rollingops_principal/testing.py",
    } <= modules
    assert all(name.startswith("rollingops_principal") for name in names)


def test_the_changelog_names_the_current_version():
    assert f"## {rollingops_principal.__version__}" in (LIB / "CHANGELOG.md").read_text()


def test_every_public_name_of_the_package_loads_on_first_use():
    """The names load lazily (the worker imports the wire alone); each must still be there."""
    missing = [
        name for name in rollingops_principal.__all__ if not hasattr(rollingops_principal, name)
    ]
    assert missing == []
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        _ = rollingops_principal.Missing  # pyright: ignore[reportAttributeAccessIssue]
