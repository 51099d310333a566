"""A unit's keys and certificates stay root-only: drifted modes and owners are repaired in the
next hook that reads them, in place (same file, content untouched), and a link planted at a key
path is replaced, never followed.

Each test starts from the files the real charm wrote for a unit connected to charmed-etcd
(the real provider code on a test-bed etcd), then changes them as an operator or intruder would.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from charm_helpers import peer, unit_dir
from ops import testing
from test_etcd_handshake import round_trip, with_client_ca, worker_settings

NOBODY = 65534
ON_ETCD = testing.ActiveStatus("idle (etcd, max-concurrent 1)")


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    status = path.lstat()
    return status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)


def loosen(path: Path, mode: int) -> int:
    """Give ``path`` another owner and ``mode``; return its inode."""
    os.chown(path, NOBODY, NOBODY)
    path.chmod(mode)
    return path.stat().st_ino


ROOT_ONLY = (os.getuid(), os.getgid(), 0o600)


@pytest.mark.parametrize("hook", ["update_status", "config_changed"])
def test_the_active_pair_is_made_root_only_again_in_place(ctx, supervisor, wired, tmp_path, hook):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    directory = unit_dir(tmp_path)
    files = [directory / name for name in ("client.key", "client.pem", "etcd-ca.pem")]
    before = {path: (loosen(path, 0o644), path.read_text()) for path in files}
    loosen(directory, 0o755)
    out = ctx.run(getattr(ctx.on, hook)(), out)
    assert owner_and_mode(directory) == (os.getuid(), os.getgid(), 0o700)
    for path, (inode, content) in before.items():
        assert owner_and_mode(path) == ROOT_ONLY, path.name
        assert (path.stat().st_ino, path.read_text()) == (inode, content), path.name
    assert out.unit_status == ON_ETCD


def test_the_own_key_and_leaf_are_made_root_only_again(ctx, supervisor, wired, tmp_path):
    out = with_client_ca(ctx, wired)
    directory = unit_dir(tmp_path)
    files = [directory / name for name in ("unit.key", "unit.pem")]
    before = {path: (loosen(path, 0o664), path.read_text()) for path in files}
    ctx.run(ctx.on.update_status(), out)
    for path, (inode, content) in before.items():
        assert owner_and_mode(path) == ROOT_ONLY, path.name
        assert (path.stat().st_ino, path.read_text()) == (inode, content), path.name
    assert worker_settings(tmp_path).cert_file.read_text() == (directory / "unit.pem").read_text()


def plant_link(path: Path, target: Path) -> None:
    """Move ``path`` to ``target`` (another owner, readable by all) and link ``path`` to it."""
    path.rename(target)
    for item in (target, *(target.iterdir() if target.is_dir() else ())):
        loosen(item, 0o755 if item.is_dir() else 0o644)
    path.symlink_to(target)


def listing(target: Path) -> dict[str, tuple[tuple[int, int, int], str]]:
    """Owners, mode and content of ``target`` and every file in it."""
    items = [target, *(target.iterdir() if target.is_dir() else ())]
    return {
        item.name: (owner_and_mode(item), "" if item.is_dir() else item.read_text())
        for item in items
    }


@pytest.mark.parametrize("name", ["client.key", "."], ids=["key path", "unit directory"])
def test_a_link_planted_at_a_key_path_or_the_unit_directory_is_replaced_never_followed(
    ctx, supervisor, wired, tmp_path, name
):
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    planted = (unit_dir(tmp_path) / name).resolve()
    elsewhere = tmp_path / "elsewhere"
    plant_link(planted, elsewhere)
    seen = listing(elsewhere)
    out = ctx.run(ctx.on.update_status(), out)
    assert not planted.is_symlink()
    assert owner_and_mode(unit_dir(tmp_path)) == (os.getuid(), os.getgid(), 0o700)
    assert owner_and_mode(unit_dir(tmp_path) / "client.key") == ROOT_ONLY
    assert listing(elsewhere) == seen  # the link's target is left as it was
    assert out.unit_status == ON_ETCD
    assert round_trip(worker_settings(tmp_path), "unlinked", b"1") == b"1"
