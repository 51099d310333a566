"""Write secrets to disk: root-only, atomically, never partially readable."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by its owner only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, content: str) -> bool:
    """Write ``content`` to ``path`` with mode 0600, atomically; return whether it changed.

    The temporary file is created 0600 in the same directory, so the content is never
    readable by anyone else, not even for a moment, and a reader never sees half a file.
    """
    private_dir(path.parent)
    if _holds(path, content):
        path.chmod(0o600)  # content right, mode perhaps not: repair it
        return False
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)  # something is in the way of a file we own: it goes
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(content)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _holds(path: Path, content: str) -> bool:
    """Whether ``path`` is a regular file (not a link) with exactly ``content``."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return path.read_text() == content
    except (OSError, UnicodeDecodeError):
        return False


def read_private(path: Path) -> str:
    """The text of a file we wrote, or "" if it is missing or unreadable (then rewritten)."""
    if path.is_symlink() or not path.is_file():
        return ""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""
