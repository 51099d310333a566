"""Operator control of a lock domain: pause, resume, force-release, token floor, and a view.

A pause is one key, ``<prefix>paused``, holding who paused and why. Workers that get a slot
while it exists keep the slot but start nothing (no new grants) until it is removed; operations
already running finish normally. A pause key nobody can read (hand-written, or from a newer
version) counts as a pause: failing safe means no new grants, never a crashed worker.

Force-release revokes the lease of a stuck holder: its waiter key goes at once, the next waiter
gets the slot, and the stuck worker learns that it lost the lock (its claim transaction fails,
or its lease tells it); its fencing token is stale from then on. Where etcd refuses the revoke
(another application bound a key of its own to the lease, docs/lease-isolation.md), the holder's
waiter key is deleted instead: only we may write under our prefix, so that always works. The
lease then lives on, and the stuck worker learns it from its next proving transaction instead.
The operation it was running then ends as ``revoked`` in its queue (``revoke_running``).

The token floor, ``<prefix>token-floor`` (a decimal integer), keeps fencing tokens increasing
across backend switches. While the application ran on the peer backend, tokens went on past
etcd's; when it returns to etcd, the leader raises the floor to the highest token granted
meanwhile. A worker's token is ``floor + the revision at which it learnt that it holds``
(``semaphore``), where the floor is the one in force at that revision (``GrantState.token_for``).
Why that is enough: the floor never decreases and grants are learnt at increasing revisions, so
tokens strictly increase in grant order; and every grant learnt after a raise gets a token above
it. A grant learnt before a raise gets no token at all (its holder enters again), which keeps
tokens unique when k > 1.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .etcd_client import (
    Compare,
    EtcdClient,
    EtcdError,
    EtcdPermissionError,
    KeyValue,
    Op,
    WatchBrokenError,
)
from .models import Outcome, UnitQueue, utcnow
from .semaphore import Contender, contenders_of, ordered
from .store import OperationStore, waiters_prefix

logger = logging.getLogger(__name__)

_FLOOR_CONFLICTS = 16
_FLOOR_FORMAT = re.compile(rb"[0-9]{1,30}")
_WAKE_INTERVAL = 0.2
"""How often a wait for a resume looks at its local stop and wake conditions (no request)."""


class Pause(BaseModel):
    """Why the domain is paused, by whom, since when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str
    by: str
    since: dt.datetime


ReleaseMethod = Literal["lease-revoked", "key-deleted"]
"""How a holder was forced out: its lease revoked, or (the revoke refused) its key deleted."""


@dataclass(frozen=True)
class ForcedOut:
    """One holder that a force-release took the slot from, and how."""

    owner: str
    token: int
    lease: int
    how: ReleaseMethod


class FloorConflictError(EtcdError):
    """Too many concurrent writers of the token floor; it was not raised."""


class UnreadableFloorError(ValueError):
    """The token floor key does not hold a decimal integer."""


@dataclass(frozen=True)
class GrantState:
    """What the domain says about a claim: the pause and the token floor, read together.

    ``conditions`` go into the claim transaction, so that a pause or a floor raise that lands
    between this read and the claim makes the claim fail instead of slipping past it.
    """

    pause: Pause | None
    floor: int
    floor_revision: int
    """Mod revision of the floor key; 0 when it was never raised."""
    revision: int
    """Store revision of the read, where a watch for changes starts."""
    paused_key: str
    floor_key: str

    def token_for(self, revision: int) -> int | None:
        """Fencing token of a grant learnt at ``revision``, under this floor.

        ``None`` when the floor was raised after that: the floor in force then is gone, and the
        current one could repeat a token already granted (k > 1), so its holder must enter
        again.
        """
        if self.floor_revision > revision:
            return None
        return self.floor + revision

    def conditions(self) -> list[Any]:
        """Compares proving, at the claim's revision, that the domain is unpaused, same floor."""
        floor = (
            Compare.missing(self.floor_key)
            if self.floor_revision == 0
            else Compare.mod_revision(self.floor_key, self.floor_revision)
        )
        return [Compare.missing(self.paused_key), floor]


def _summary(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "document"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _read_pause(kv: KeyValue | None) -> Pause | None:
    """The pause in ``kv``; an unreadable one is still a pause (fail safe), and is logged."""
    if kv is None:
        return None
    try:
        return Pause.model_validate_json(kv.value)
    except ValidationError as error:
        reason = f"unreadable pause key: {_summary(error)}"
        logger.warning("%s holds an %s", kv.key, reason)
        return Pause(reason=reason, by="unknown", since=utcnow())


def _parse_floor(kv: KeyValue | None) -> int:
    if kv is None:
        return 0
    if not _FLOOR_FORMAT.fullmatch(kv.value):
        raise UnreadableFloorError(f"{kv.key} holds {kv.value[:40]!r}, not a decimal integer")
    return int(kv.value)


class DomainControl:
    """Pause state, token floor, holders and queue of one domain."""

    def __init__(self, client: EtcdClient, prefix: str, capacity: int) -> None:
        self._client = client
        self._prefix = prefix
        self._waiters = waiters_prefix(prefix)
        self._capacity = capacity
        self.paused_key = client.check_key(f"{prefix}paused")
        self.floor_key = client.check_key(f"{prefix}token-floor")

    def contenders(self) -> list[Contender]:
        """Holders first, then waiters, in grant order, with the tokens the floor gives them."""
        waiters, base = self._waiters_and_floor()
        return contenders_of(waiters, self._capacity, base)

    def _waiters_and_floor(self) -> tuple[list[KeyValue], int]:
        """The waiter keys in grant order and the token floor, in one read."""
        result = self._client.txn(
            compare=[], success=[Op.get_prefix(self._waiters), Op.get(self.floor_key)]
        )
        waiters, floor = result.ranges
        try:
            base = _parse_floor(floor[0] if floor else None)
        except UnreadableFloorError:
            base = 0  # for display only: no worker claims while the floor is unreadable
        return waiters, base

    def position(self, owner: str) -> int | None:
        """1-based place of ``owner`` among the waiters; ``None`` if it holds or is absent."""
        waiting = [c.owner for c in self.contenders() if not c.holding]
        return waiting.index(owner) + 1 if owner in waiting else None

    def pause(self, reason: str, by: str) -> Pause:
        """Stop new grants in the whole domain."""
        pause = Pause(reason=reason, by=by, since=utcnow())
        self._client.put(self.paused_key, pause.model_dump_json().encode())
        return pause

    def resume(self) -> bool:
        """Allow grants again; return whether the domain was paused (even by a bad key)."""
        return self._client.delete(self.paused_key) > 0

    def paused(self) -> Pause | None:
        """What stops new grants now, if anything (a bad pause key or floor key does too)."""
        return self.grant_state().pause

    def grant_state(self) -> GrantState:
        """The pause and the token floor, in one read (one round trip, as the pause alone was).

        An unreadable floor stops grants like a pause: with no floor, a token could go back
        below one the peer backend already handed out.
        """
        result = self._client.txn(
            compare=[], success=[Op.get(self.paused_key), Op.get(self.floor_key)]
        )
        paused, floor = (kvs[0] if kvs else None for kvs in result.ranges)
        pause = _read_pause(paused)
        try:
            base = _parse_floor(floor)
        except UnreadableFloorError as error:
            logger.warning("%s", error)
            base = 0
            pause = pause or Pause(
                reason=f"unreadable token floor: {error}", by="unknown", since=utcnow()
            )
        return GrantState(
            pause=pause,
            floor=base,
            floor_revision=floor.mod_revision if floor is not None else 0,
            revision=result.revision,
            paused_key=self.paused_key,
            floor_key=self.floor_key,
        )

    def token_floor(self) -> int:
        """The current token floor (0 if never raised); raises ``UnreadableFloorError``."""
        kv, _ = self._client.get(self.floor_key)
        return _parse_floor(kv)

    def raise_token_floor(self, token: int) -> int:
        """Make every token granted from now on greater than ``token``; return the floor.

        Only ever raises: a lower or equal ``token`` changes nothing, and concurrent raises keep
        the highest (compare-and-swap on the key's mod revision). An unreadable floor is
        replaced, since it already stops every grant. Call it before etcd grants again after a
        fallback, with the highest token the other backend granted.
        """
        if token < 0:
            raise ValueError("a token floor is not negative")
        kv, _ = self._client.get(self.floor_key)
        for _ in range(_FLOOR_CONFLICTS):
            try:
                current = _parse_floor(kv)
            except UnreadableFloorError as error:
                logger.warning("replacing it: %s", error)
                current = -1
            if current >= token:
                return current
            guard = (
                Compare.missing(self.floor_key)
                if kv is None
                else Compare.mod_revision(self.floor_key, kv.mod_revision)
            )
            result = self._client.txn(
                compare=[guard],
                success=[Op.put(self.floor_key, str(token).encode())],
                failure=[Op.get(self.floor_key)],
            )
            if result.succeeded:
                return token
            (kvs,) = result.ranges
            kv = kvs[0] if kvs else None
        raise FloorConflictError(f"{self.floor_key}: {_FLOOR_CONFLICTS} concurrent raises")

    def force_release(self, owner: str) -> list[int]:
        """Take the slot from every holder owned by ``owner``; return their tokens.

        The tokens only, as the force-release action records them; ``release_holders`` also
        says, for each, whether its lease was revoked or its key deleted.
        """
        return [forced.token for forced in self.release_holders(owner)]

    def release_holders(self, owner: str) -> list[ForcedOut]:
        """Take the slot from every holder owned by ``owner``; say how, for each.

        Revoking the lease is the first choice: the stuck worker's lease thread then learns,
        at its next refresh, that it lost the lock. etcd refuses the revoke when the lease
        carries a key we may not write, which another application can bind to it
        (docs/lease-isolation.md). A lease refused that way (or a waiter key with no lease at
        all) would otherwise keep its holder in place for as long as anyone refreshes it, so
        we delete the waiter key itself, which only we may do and always can. The delete is
        compared on the key's create revision: a key created since the read is not the holder
        we were asked to remove.
        """
        waiters, base = self._waiters_and_floor()
        forced: list[ForcedOut] = []
        for entry in ordered(waiters)[: self._capacity]:
            if entry.owner != owner:
                continue
            how = self._force_out(entry.kv)
            if how is not None:
                forced.append(ForcedOut(owner, base + entry.kv.mod_revision, entry.kv.lease, how))
        return forced

    def revoke_running(self, unit: str, tokens: Collection[int], reason: str) -> str | None:
        """End ``unit``'s running operation as ``revoked``, if it still runs under ``tokens``.

        Called after ``release_holders`` with the tokens it took, so that the unit's history
        says the operator ended the operation and why. Revoke first, then mark: marked first,
        the still-valid slot would let its worker claim the next operation. Compare-and-swap:
        an operation that ended meanwhile (the worker wrote ``lock-lost``, or applied a result)
        or was granted anew under another token is left alone. Returns the id it ended.
        """
        ended: str | None = None

        def revoke(queue: UnitQueue) -> UnitQueue:
            nonlocal ended
            running = queue.current
            ended = running.operation.id if running and running.token in tokens else None
            return queue.abandon(Outcome.REVOKED, reason, utcnow()) if ended else queue

        OperationStore(self._client, self._prefix, unit).update(revoke)
        return ended

    def _force_out(self, kv: KeyValue) -> ReleaseMethod | None:
        """Revoke ``kv``'s lease or, if etcd will not, delete ``kv``; return which.

        ``None`` when the key went (a release) or was created anew (its holder entered again,
        with a new token) between our read and the delete: that holder no longer held.
        """
        if kv.lease:
            try:
                self._client.revoke_lease(kv.lease)
            except EtcdPermissionError as error:
                logger.warning(
                    "lease %x of %s cannot be revoked (%s): deleting the key instead",
                    kv.lease,
                    kv.key,
                    error,
                )
            else:
                return "lease-revoked"
        result = self._client.txn(
            compare=[Compare.create_revision(kv.key, kv.create_revision)],
            success=[Op.delete(kv.key)],
        )
        if not result.succeeded:
            logger.info("%s was already gone or created anew; nothing deleted", kv.key)
            return None
        return "key-deleted"

    def wait_for_change(
        self, state: GrantState, stop: threading.Event, wake: Callable[[], bool]
    ) -> None:
        """Block until the pause or the floor changes after ``state``, ``stop`` or ``wake()``.

        The caller reads the state again: a pause replaced by another is still a pause. A broken
        watch returns too, so the read that follows decides (and meets a dead cluster, if any).
        """
        keys = [self.paused_key, self.floor_key]
        with self._client.watch(keys, start_revision=state.revision + 1) as stream:
            while not stop.is_set() and not wake():
                try:
                    if stream.next(timeout=_WAKE_INTERVAL):
                        return
                except WatchBrokenError:
                    return
