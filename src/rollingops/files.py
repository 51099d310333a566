"""Write secrets to disk: root-only, atomically, never partially readable."""

from __future__ import annotations

import os
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
    if path.exists() and path.read_text() == content:
        return False
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
