"""The synchronous holds a unit's worker serves right now, as a file the charm can read.

The charm decides when the worker may be restarted or stopped (new config, new credentials,
new charm code, a relation gone). A restart ends every hold the worker serves, so the charm
must see them: the worker writes this file (0600, atomically) whenever a hold is granted or
ends, and the charm reads it in a hook without talking to the worker or to etcd.

A file left by a worker that died says nothing: the holds died with the worker's connections,
so the reader trusts the file only while the process that wrote it is alive: ``worker_pid``
*with its start time* (``worker_start``), since a dead worker's pid may name any process later.
A worker also rewrites the file when it starts, so one that replaced a killed worker does not
leave the old holds standing until its own first hold.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .files import read_private, write_private

SYNC_HOLDS_NAME = "sync-holds.json"
SCHEMA_VERSION = 1


class SyncHold(BaseModel):
    """One hold the worker grants now."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    holder: Annotated[str, Field(max_length=256)]
    context: Annotated[str, Field(max_length=32)]
    token: int
    since: datetime


class SyncHolds(BaseModel):
    """Every hold one worker grants now; ``extra="ignore"`` so a newer worker's file reads."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION
    worker_pid: int
    worker_start: int | None = None
    """The writer's start time (``/proc/<pid>/stat``); ``None`` from a worker that predates it."""
    holds: tuple[SyncHold, ...] = ()


def holds_file(state_dir: Path) -> Path:
    """Where one unit's worker publishes its holds."""
    return state_dir / SYNC_HOLDS_NAME


def publish(state_dir: Path, holds: tuple[SyncHold, ...]) -> None:
    """Worker side: say which holds this process grants now (all of them, each time)."""
    pid = os.getpid()
    document = SyncHolds(worker_pid=pid, worker_start=_start_of(pid), holds=holds)
    write_private(holds_file(state_dir), document.model_dump_json())


def live_holds(state_dir: Path) -> tuple[SyncHold, ...]:
    """Charm side: the holds a living worker grants now; none if its writer is gone.

    An unreadable file counts as no hold: it cannot come from a worker of ours that is
    serving (each write is atomic), and nothing must wait forever on it.
    """
    text = read_private(holds_file(state_dir))
    if not text:
        return ()
    try:
        document = SyncHolds.model_validate_json(text)
    except ValidationError:
        return ()
    start = _start_of(document.worker_pid)
    if start is None or document.worker_start not in (None, start):
        return ()
    return document.holds


def _start_of(pid: int) -> int | None:
    """The start time of the living process ``pid``; ``None`` if there is none (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])
