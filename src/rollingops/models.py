"""Operations and the per-unit operation queue, as stored in etcd and in the peer databag.

Everything here is a pydantic model serialised as plain JSON (never JSON inside a JSON string),
so the same document can be validated wherever it is read: by the worker, by the charm and by
the tests. Queue transitions are pure functions that return a new queue; the stores persist
each one in a single transaction.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_validator

MAX_KWARGS_BYTES = 32 * 1024
"""Largest accepted kwargs document (compact JSON, UTF-8).

With at most ``MAX_PENDING`` operations per unit a queue stays well under etcd's 1.5 MiB
request limit.
"""
MAX_PENDING = 32
HISTORY_LENGTH = 20

OperationId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
CallbackName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Document(BaseModel):
    """Base of every stored document: immutable, strict about unknown keys, kebab-case JSON."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=_kebab, populate_by_name=True
    )

    def to_json(self) -> str:
        """Compact JSON with the kebab-case keys of the protocol."""
        return self.model_dump_json(by_alias=True)


def utcnow() -> dt.datetime:
    """Timezone-aware now; every stored timestamp is UTC."""
    return dt.datetime.now(dt.timezone.utc)


def kwargs_size(kwargs: dict[str, Any]) -> int:
    """Size in bytes of ``kwargs`` as compact UTF-8 JSON, the unit of ``MAX_KWARGS_BYTES``."""
    return len(json.dumps(kwargs, separators=(",", ":"), ensure_ascii=False).encode())


class OperationResult(str, enum.Enum):
    """What the principal reports once it has run an operation under the lock."""

    RELEASE = "release"
    """Done: release the lock."""
    RETRY_RELEASE = "retry-release"
    """Run it again later: requeue at the head of the unit's queue and release the lock."""
    RETRY_HOLD = "retry-hold"
    """Run it again now, keeping the lock."""


class Outcome(str, enum.Enum):
    """How an operation left the queue for good."""

    DONE = "done"
    DROPPED = "dropped"
    LOCK_LOST = "lock-lost"
    """The worker lost the lock (lease expired or revoked) while the operation ran; it is not
    run again, so the principal and the operator must be told that exclusion was not kept."""
    HOOK_FAILED = "hook-failed"
    """The lock-granted hook could not be fired within the worker's attempts; the lock went to
    the next unit instead of staying with one whose agent cannot run it."""
    CANCELLED = "cancelled"
    """The operator cancelled it (``cancel`` action), waiting or stuck while running."""
    REVOKED = "revoked"
    """The operator force-released the lock while the operation ran (``force-release``
    action); it is not run again, and exclusion was not kept: it may still be running."""


class Operation(_Document):
    """One disruptive action a unit asked to run under the lock."""

    id: OperationId
    callback: CallbackName
    kwargs: dict[str, JsonValue] = Field(default_factory=dict[str, JsonValue])
    max_retry: Annotated[int, Field(ge=0, le=1000)] | None = None
    """Retries allowed after the first attempt; ``None`` retries without bound."""
    attempt: Annotated[int, Field(ge=0)] = 0
    """How many times the operation has been granted so far."""
    requested_at: AwareDatetime

    @field_validator("kwargs")
    @classmethod
    def _bounded(cls, kwargs: dict[str, JsonValue]) -> dict[str, JsonValue]:
        size = kwargs_size(kwargs)
        if size > MAX_KWARGS_BYTES:
            raise ValueError(f"kwargs are {size} bytes, more than {MAX_KWARGS_BYTES}")
        return kwargs

    def same_request(self, other: Operation) -> bool:
        """Whether two operations ask for the same thing (same callback and kwargs)."""
        return self.callback == other.callback and self.kwargs == other.kwargs

    @property
    def retries_exhausted(self) -> bool:
        """Whether another attempt would exceed ``max_retry``."""
        return self.max_retry is not None and self.attempt > self.max_retry


class Claim(_Document):
    """The operation a unit is running now, claimed under the lock's fencing token.

    What ``UnitQueue.claim`` starts. The principal is told of it as a protocol ``Grant``;
    the peer leader's permission to claim is a ``PeerGrant``.
    """

    operation: Operation
    token: Annotated[int, Field(ge=1)]
    granted_at: AwareDatetime
    result: OperationResult | None = None
    """Set when the principal reports; the worker acts on it and clears the claim."""
    rerun: bool = False
    """This attempt was granted before, to a worker that died before its result came
    (``UnitQueue.regrant``): its callback may have run already, wholly or in part. A re-run
    after a crash is at-least-once by nature; the principal is told, so that it can check."""


class CompletedOperation(_Document):
    """A history entry: an operation that finished or was dropped."""

    id: OperationId
    callback: CallbackName
    outcome: Outcome
    attempts: int
    token: int
    requested_at: AwareDatetime
    granted_at: AwareDatetime
    finished_at: AwareDatetime
    reason: str = ""


class QueueFullError(ValueError):
    """The unit already has ``MAX_PENDING`` operations waiting."""


class UnitQueue(_Document):
    """A unit's operations: waiting (head first), running, and recently completed."""

    pending: tuple[Operation, ...] = ()
    current: Claim | None = None
    history: tuple[CompletedOperation, ...] = ()
    highest_token: int = 0
    """The highest fencing token this queue was ever granted under. Kept when the operation
    is requeued (``retry-release``) or its history entry trimmed, so that a peer leader taking
    over from etcd hands out tokens above every token etcd gave (``peer_scheduler``)."""

    @property
    def has_work(self) -> bool:
        """Whether the unit needs the lock (something waits or runs)."""
        return bool(self.pending) or self.current is not None

    def operation_ids(self) -> set[str]:
        """Ids of every operation still in the queue (waiting or running)."""
        ids = {op.id for op in self.pending}
        if self.current is not None:
            ids.add(self.current.operation.id)
        return ids

    def enqueue(self, operation: Operation) -> UnitQueue:
        """Append ``operation``, unless the last waiting one asks for exactly the same thing.

        Only waiting operations are compared: a request equal to one that is already running is
        kept, since the running one may have started before whatever prompted the new request.
        """
        if self.pending and self.pending[-1].same_request(operation):
            return self
        if operation.id in self.operation_ids():
            raise ValueError(f"operation id {operation.id!r} is already queued")
        if len(self.pending) >= MAX_PENDING:
            raise QueueFullError(f"{MAX_PENDING} operations are already waiting")
        return self.model_copy(update={"pending": (*self.pending, operation)})

    def claim(self, token: int, now: dt.datetime) -> UnitQueue:
        """Start the head operation under the lock identified by ``token``."""
        if self.current is not None:
            raise ValueError("an operation is already running")
        if not self.pending:
            raise ValueError("nothing to claim")
        head, *rest = self.pending
        started = head.model_copy(update={"attempt": head.attempt + 1})
        grant = Claim(operation=started, token=token, granted_at=now)
        return self.model_copy(
            update={
                "pending": tuple(rest),
                "current": grant,
                "highest_token": max(self.highest_token, token),
            }
        )

    def report(self, operation_id: str, result: OperationResult) -> UnitQueue:
        """Record the principal's result for the running operation."""
        if self.current is None or self.current.operation.id != operation_id:
            raise ValueError(f"operation {operation_id!r} is not running")
        return self.model_copy(
            update={"current": self.current.model_copy(update={"result": result})}
        )

    def finish(self, now: dt.datetime) -> tuple[UnitQueue, bool]:
        """Apply the reported result; return the new queue and whether the lock is kept.

        ``release`` completes the operation; ``retry-release`` puts it back at the head of the
        queue; ``retry-hold`` runs it again at once, keeping the lock (the grant restarts with
        the same token). A retry beyond ``max-retry`` drops the operation and records why.
        """
        grant = self.current
        if grant is None or grant.result is None:
            raise ValueError("no reported result to apply")
        op = grant.operation
        if grant.result is OperationResult.RELEASE:
            return self._complete(grant, Outcome.DONE, "", now), False
        if op.retries_exhausted:
            reason = (
                f"{grant.result.value} after {op.attempt} attempts exceeds"
                f" max-retry {op.max_retry}"
            )
            return self._complete(grant, Outcome.DROPPED, reason, now), False
        if grant.result is OperationResult.RETRY_HOLD:
            again = Claim(
                operation=op.model_copy(update={"attempt": op.attempt + 1}),
                token=grant.token,
                granted_at=now,
            )
            return self.model_copy(update={"current": again}), True
        return self.model_copy(update={"pending": (op, *self.pending), "current": None}), False

    def regrant(self, token: int, now: dt.datetime) -> UnitQueue:
        """Hand the running operation a new token after the lock was re-acquired for it.

        A worker that restarts while an operation runs takes the lock again for it and fires
        its hook again. The attempt is not counted twice (``max-retry`` counts the principal's
        answers, and a crash is none), but the claim says ``rerun``: the first grant's callback
        may have started, even finished, before the crash, and only the principal can tell.
        """
        if self.current is None:
            raise ValueError("no operation is running")
        again = self.current.model_copy(update={"token": token, "granted_at": now, "rerun": True})
        highest = max(self.highest_token, token)
        return self.model_copy(update={"current": again, "highest_token": highest})

    def cancel(
        self,
        operation_id: str,
        reason: str,
        now: dt.datetime,
        outcome: Outcome = Outcome.CANCELLED,
    ) -> UnitQueue:
        """Drop ``operation_id`` for good, waiting or running; it ends ``outcome``.

        ``cancelled`` by the operator's ``cancel``; ``revoked`` by a force-release of a grant
        never claimed. A running one gives the lock back: its worker sees no current operation
        and releases.
        """
        if self.current is not None and self.current.operation.id == operation_id:
            return self._complete(self.current, outcome, reason, now)
        for op in self.pending:
            if op.id == operation_id:
                entry = CompletedOperation(
                    id=op.id,
                    callback=op.callback,
                    outcome=outcome,
                    attempts=op.attempt,
                    token=0,  # never granted
                    requested_at=op.requested_at,
                    granted_at=now,
                    finished_at=now,
                    reason=reason,
                )
                return self.model_copy(
                    update={
                        "pending": tuple(p for p in self.pending if p.id != operation_id),
                        "history": (*self.history, entry)[-HISTORY_LENGTH:],
                    }
                )
        raise ValueError(f"no operation {operation_id!r} is waiting or running on this unit")

    def abandon(self, outcome: Outcome, reason: str, now: dt.datetime) -> UnitQueue:
        """End the running operation for good with ``outcome``, whatever the principal reports.

        For the worker's own verdicts (lock lost, hook never fired): the operation leaves the
        queue with its reason in ``history`` and is not run again.
        """
        if self.current is None:
            raise ValueError("no operation is running")
        return self._complete(self.current, outcome, reason, now)

    def _complete(
        self, grant: Claim, outcome: Outcome, reason: str, now: dt.datetime
    ) -> UnitQueue:
        entry = CompletedOperation(
            id=grant.operation.id,
            callback=grant.operation.callback,
            outcome=outcome,
            attempts=grant.operation.attempt,
            token=grant.token,
            requested_at=grant.operation.requested_at,
            granted_at=grant.granted_at,
            finished_at=now,
            reason=reason,
        )
        history = (*self.history, entry)[-HISTORY_LENGTH:]
        return self.model_copy(update={"current": None, "history": history})
