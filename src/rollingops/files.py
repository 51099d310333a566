"""Write secrets to disk: root-only, atomically, never partially readable.

Every read and write also checks what is already there: a file must be a regular file (a link
is never followed), owned by root or by this process (user and group), mode 0600, in a 0700
directory of the same owners. A drifted owner or mode is repaired in place, through the open
descriptor, so a path swapped meanwhile is never touched and unchanged content is not
rewritten. The repair only ever narrows access: nothing is readable by others because of it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _NO_FOLLOW
"""Non-blocking: a FIFO planted in place of a file must not hang the hook."""


def _make_private(fd: int, mode: int) -> None:
    """Give the open file or directory exactly ``mode`` (narrowest first), then our owners."""
    status = os.fstat(fd)
    if stat.S_IMODE(status.st_mode) != mode:
        os.fchmod(fd, mode)
    if status.st_uid not in (0, os.getuid()) or status.st_gid not in (0, os.getgid()):
        os.fchown(fd, os.getuid(), os.getgid())


def _secure_dir(path: Path) -> bool:
    """Repair the owners and mode of the directory at ``path``; False if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW)
    except OSError:  # missing, a link, or not a directory
        return False
    try:
        _make_private(fd, DIR_MODE)
    finally:
        os.close(fd)
    return True


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by its owner only (0700), or repair it."""
    if path.is_symlink():
        path.unlink()  # never followed: a directory of ours takes its place
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _secure_dir(path)
    return path


def write_private(path: Path, content: str, mode: int = FILE_MODE) -> bool:
    """Write ``content`` to ``path`` with ``mode`` (0600), atomically; whether it changed.

    The temporary file is created 0600 in the same directory and given ``mode`` before it
    takes the path, so the content is never readable by anyone else, not even for a moment,
    a reader never sees half a file, and an executable (0700) is never briefly not one.
    ``os.replace`` replaces a link at ``path`` itself, never its target.
    """
    private_dir(path.parent)
    if _read_repaired(path, mode) == content:
        return False
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)  # something is in the way of a file we own: it goes
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(content)
            os.fchmod(out.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def read_private(path: Path) -> str:
    """The text of a file we wrote, owners and modes repaired; "" if it is not usable.

    Missing, not a regular file (a link is never followed), in a directory that is a link, or
    unreadable: all read as "", and the caller then writes the file anew, which replaces
    whatever was there.
    """
    if not _secure_dir(path.parent):
        return ""
    return _read_repaired(path) or ""


def _read_repaired(path: Path, mode: int = FILE_MODE) -> str | None:
    """The text of the regular file at ``path`` after repairing it to ``mode``, else None."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        _make_private(fd, mode)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read().decode()
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
