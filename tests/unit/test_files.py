"""``rollingops.files``: unit files written whole, private, and with the mode they need."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from rollingops.files import write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_executable_keeps_its_mode_and_inode_when_its_content_is_unchanged(tmp_path):
    launcher = tmp_path / "unit" / "rollingops-lock"
    assert write_private(launcher, "#!/bin/true\n", mode=0o700)
    inode = launcher.stat().st_ino
    assert not write_private(launcher, "#!/bin/true\n", mode=0o700)
    assert _mode(launcher) == 0o700
    assert launcher.stat().st_ino == inode, "unchanged content was rewritten"


def test_an_executable_is_executable_at_every_instant_of_a_rewrite(tmp_path):
    """A script running ``rollingops-lock`` while a hook rewrites it must never find it 0600."""
    launcher = tmp_path / "unit" / "rollingops-lock"
    write_private(launcher, "v0\n", mode=0o700)
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                seen.add(_mode(launcher))
            except FileNotFoundError:
                seen.add(-1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for n in range(300):
            write_private(launcher, f"v{n % 2}\n", mode=0o700)
            write_private(launcher, f"v{n % 2}\n", mode=0o700)  # unchanged: repaired only
    finally:
        done.set()
        watcher.join()
    assert seen == {0o700}


def test_a_drifted_mode_is_narrowed_back_without_a_rewrite(tmp_path):
    key = tmp_path / "unit" / "client.key"
    write_private(key, "secret")
    os.chmod(key, 0o644)
    inode = key.stat().st_ino
    assert not write_private(key, "secret")
    assert _mode(key) == 0o600
    assert key.stat().st_ino == inode
