"""A unit's durable state: one JSON document in the charm's StoredState.

It holds the operation queue (mirrored from etcd after every transition the charm sees), ids
already seen from the principal (so a request is never run twice), rejections to report, the
last etcd failure, run-exclusive outcomes and forced releases.

Why not the peer databag (design §4): every write there fires ``relation-changed`` on every
other unit, a few times per operation, so O(N) hooks on other machines per operation. While
etcd is the backend, etcd holds the authoritative queue; this unit-local copy (ops' state
database on the unit's machine) is what the unit publishes to the peer databag when the
application falls back to the peer backend.
"""

from __future__ import annotations

import datetime as dt
import logging

from ops.framework import BoundStoredState
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rollingops_principal import Finished, Rejection
from rollingops_principal.protocol import MAX_LISTED

from rollingops.backend_choice import Backend
from rollingops.models import UnitQueue

SEEN_LIMIT = MAX_LISTED
"""Seen ids are those the principal still lists (see ``intake.absorb``), never more than
``MAX_LISTED``: this bound only guards a record from elsewhere, it never forgets a listed id."""
REPORT_LIMIT = 32
logger = logging.getLogger(__name__)


class EtcdFailure(BaseModel):
    """The worker gave up on etcd."""

    model_config = ConfigDict(frozen=True)

    since: dt.datetime
    reason: str


class ExclusiveRun(BaseModel):
    """The outcome of one run-exclusive command."""

    model_config = ConfigDict(frozen=True)

    id: str
    argv: list[str]
    exit_code: int | None
    output: str
    finished_at: dt.datetime


class ForcedRelease(BaseModel):
    """An operator's force-release, recorded where it was asked."""

    model_config = ConfigDict(frozen=True)

    unit: str
    tokens: list[int]
    reason: str
    at: dt.datetime


class UnitRecord(BaseModel):
    """Everything this unit must not lose between hooks."""

    model_config = ConfigDict(frozen=True)

    queue: UnitQueue = Field(default_factory=UnitQueue)
    seen: tuple[str, ...] = ()
    """Request ids taken, kept while the principal lists them (a request is taken once)."""
    rejected: tuple[Rejection, ...] = ()
    merged: tuple[Finished, ...] = ()
    """Requests that were identical to one still waiting (the seed's rule)."""
    etcd_failure: EtcdFailure | None = None
    exclusive_runs: tuple[ExclusiveRun, ...] = ()
    forced: tuple[ForcedRelease, ...] = ()
    last_backend: Backend | None = None
    """The backend this unit last synced with: entering etcd from peer or none replaces the
    etcd queue (stale since the fallback) with this record's queue."""

    @classmethod
    def load(cls, raw: str) -> UnitRecord:
        """Read a stored record; empty is a new record, a corrupt one raises ``ValueError``."""
        if not raw:
            return cls()
        try:
            return cls.model_validate_json(raw)
        except ValidationError as error:
            raise ValueError(f"unit record unreadable: {error.error_count()} errors") from error

    def dump(self) -> str:
        """The record as stored (bounded lists)."""
        bounded = self.model_copy(
            update={
                "seen": self.seen[-SEEN_LIMIT:],
                "rejected": self.rejected[-REPORT_LIMIT:],
                "merged": self.merged[-REPORT_LIMIT:],
                "exclusive_runs": self.exclusive_runs[-REPORT_LIMIT:],
                "forced": self.forced[-REPORT_LIMIT:],
            }
        )
        return bounded.model_dump_json()


class RecordStore:
    """The unit's record in ops' StoredState: loaded and saved whole, in this unit only."""

    def __init__(self, stored: BoundStoredState) -> None:
        self._stored = stored

    def load(self) -> UnitRecord | None:
        """The record; ``None`` if it is unreadable.

        An unreadable record is left as it is (the status says so): overwriting it would lose
        the queue it holds.
        """
        try:
            return UnitRecord.load(self.raw())
        except ValueError as error:
            logger.warning("%s: leaving it untouched", error)
            return None

    def raw(self) -> str:
        """The stored text ("" before the first save)."""
        return str(self._stored.record)

    def save(self, record: UnitRecord) -> None:
        """Persist the record (never seen by peers)."""
        self._stored.record = record.dump()
