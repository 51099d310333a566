"""A fair, fenced semaphore of size k on etcd (k = 1 is a mutex), with a priority lane.

Recipe: each contender puts ``<waiters>/<lease-id>`` bound to its lease. Contenders are kept in
one order (``rank``, below); the first k hold. A waiter at position i >= k watches the deletion
of the k keys just ahead of it, those keys exactly, and re-reads when one goes: a deletion
further ahead cannot make it a holder, since the k keys ahead of it stay the same, and a key put
ahead of it only pushes it back. No polling, and a release wakes one waiter for k = 1: etcd
delivers it one event, not one to every waiter of the domain.

The order. An ordinary (asynchronous) contender ranks by its key's create revision, so it joins
at the back: FIFO. A *priority* contender (a synchronous hold, ``sync_server``) must go ahead of
every waiting ordinary contender without pushing a holder out. Its key records ``after``, the
highest level among the holders and the other priority keys when it entered; it ranks right
after the ordinary key created at ``after`` and ahead of every ordinary key created later. The
entry transaction proves that what it read is still so (no key created since the read, every
holder it saw still there): then every holder ranks ahead of the new key, and no waiter that
ranks behind it can have become a holder meanwhile. Keys only ever join behind every holder and
only leave, so a holder never loses its place: at most k hold at every instant, whatever the mix.
Priority contenders keep FIFO among themselves; they can starve ordinary ones while they keep
coming (they are meant for teardown, which is rare).

The semaphore's token is the revision at which a contender *learnt that it holds*: the entry
transaction when it held at once, else the transaction of its wake-up read, which also rewrites
its key (same value, same lease) so that the revision lands in the key's mod revision. Grants are
learnt in order, so tokens strictly increase across holders that follow one another, whatever
the priority did to the order of keys. The worker's fencing token adds the domain's token floor
to it (see ``control.GrantState``), so that tokens keep increasing across backend switches. A
protected resource that remembers the highest token it has seen can refuse a stale holder.

Holding is a local belief until a transaction proves it: ``held_condition`` is the compare that
does (the key still exists with the create revision we entered with). A key that still exists
has kept its place among the holders: nothing can get ahead of a holder.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .etcd_client import (
    MIN_ATTEMPT_TIMEOUT,
    Compare,
    EtcdClient,
    EtcdError,
    KeyValue,
    Op,
    WatchBrokenError,
    WatchStream,
)
from .lease import Lease, LeaseLostError

_WAKE_INTERVAL = 0.2
"""How often a waiting ``acquire`` looks at its local cancel flag and lease (no etcd request)."""
_REWATCH_BACKOFF = (0.05, 1.0)
"""First and longest pause before watching again after watches that failed to open in a row.

A watch on a hung member fails only after a whole call bound, but one that etcd refuses at once
would otherwise be retried in a tight loop of watches and reads for as long as the wait lasts."""


class AcquireCancelledError(Exception):
    """``acquire`` was told to stop waiting."""


class EntryConflictError(EtcdError):
    """The domain changed under every attempt of a priority entry; nothing was put."""


MAX_PRIORITY_CAPACITY = 120
"""Largest k for a priority entry: its transaction compares each holder, and etcd refuses a
transaction of more than 128 compares (``--max-txn-ops``, default 128)."""
_ENTRY_ATTEMPTS = 32


class _PriorityValue(BaseModel):
    """The value of a priority key: who it is, and the level it queues after."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    owner: Annotated[str, Field(max_length=256)]
    after: Annotated[int, Field(ge=0)]


@dataclass(frozen=True)
class Entry:
    """One waiter key, as the order needs it.

    An ordinary key's value is its owner; a priority key's is a ``_PriorityValue`` document.
    A value that is neither (only our own units write here) ranks as an ordinary key, so that
    every reader still computes the same order.
    """

    kv: KeyValue
    owner: str
    after: int | None
    """The level a priority key queues after; ``None`` for an ordinary key."""

    @classmethod
    def of(cls, kv: KeyValue) -> Entry:
        """Parse one key of the waiters range."""
        if kv.value[:1] == b"{":
            try:
                value = _PriorityValue.model_validate_json(kv.value)
            except ValidationError:
                pass
            else:
                return cls(kv, value.owner, value.after)
        return cls(kv, kv.value.decode(errors="replace"), None)

    @property
    def priority(self) -> bool:
        """Whether the key went ahead of waiting ordinary keys."""
        return self.after is not None

    @property
    def level(self) -> int:
        """Where the key sits among ordinary keys: its own create revision, or ``after``."""
        return self.kv.create_revision if self.after is None else self.after

    @property
    def rank(self) -> tuple[int, int, int]:
        """Sort key of the domain's order: holders are the first k."""
        return (self.level, self.priority, self.kv.create_revision)


def ordered(kvs: list[KeyValue]) -> list[Entry]:
    """The waiters range in grant order."""
    return sorted((Entry.of(kv) for kv in kvs), key=lambda entry: entry.rank)


def priority_value(owner: str, entries: list[Entry], capacity: int) -> bytes:
    """A priority key's value: it queues after every holder and every other priority key."""
    ahead = [*entries[:capacity], *(entry for entry in entries if entry.priority)]
    after = max((entry.level for entry in ahead), default=0)
    return _PriorityValue(owner=owner, after=after).model_dump_json().encode()


@dataclass(frozen=True)
class Contender:
    """A key in the waiters list: its owner and its place in the order.

    ``token`` is the holder's fencing token (``None`` for a waiter: it gets one when it learns
    that it holds).
    """

    owner: str
    token: int | None
    holding: bool
    lease: int
    priority: bool = False


def read_contenders(client: EtcdClient, waiters_prefix: str, capacity: int) -> list[Contender]:
    """Everyone in a domain, in grant order: the ``capacity`` holders first, then the queue."""
    return contenders_of(client.get_prefix(waiters_prefix).kvs, capacity)


def contenders_of(kvs: list[KeyValue], capacity: int, floor: int = 0) -> list[Contender]:
    """Contenders from a read of the waiters range, tokens raised by the domain's ``floor``."""
    return [
        Contender(
            entry.owner,
            floor + entry.kv.mod_revision if index < capacity else None,
            index < capacity,
            entry.kv.lease,
            entry.priority,
        )
        for index, entry in enumerate(ordered(kvs))
    ]


class FairSemaphore:
    """k holders at most among every contender on ``waiters_prefix``, first come first served.

    ``priority`` contenders go ahead of waiting ordinary ones (never ahead of a holder).
    """

    def __init__(
        self,
        client: EtcdClient,
        waiters_prefix: str,
        capacity: int,
        lease: Lease,
        owner: str,
        *,
        priority: bool = False,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if priority and capacity > MAX_PRIORITY_CAPACITY:
            raise ValueError(
                f"a priority entry needs a capacity of {MAX_PRIORITY_CAPACITY} or less"
            )
        self._client = client
        self._prefix = client.check_key(waiters_prefix)
        self.capacity = capacity
        self._lease = lease
        self._owner = owner
        self._priority = priority
        self.key = f"{waiters_prefix}{lease.id:016x}"
        self._value = owner.encode()
        """What our key holds (a priority key's value is fixed at entry, and kept)."""
        self.created: int | None = None
        """Create revision of our key while it exists."""
        self.token: int | None = None
        """Revision at which we learnt that we hold; ``None`` unless holding."""

    def acquire(self, timeout: float | None = None, cancel: threading.Event | None = None) -> int:
        """Wait for a slot; return the fencing token.

        Raises ``TimeoutError`` after ``timeout`` seconds (the waiter key is removed, so the
        place in the queue is given up), ``AcquireCancelledError`` when ``cancel`` is set, and
        ``LeaseLostError`` when the lease is lost while waiting.

        A broken watch is no reason to give up: our key, and with it our place in the queue,
        stays, and the wait is set up again from a fresh read on the member the client moved
        to. That holds as well for a watch that breaks or is never acknowledged while we open
        it (its member hung or went away just then); giving the key up there would send a
        waiter that had queued for an hour to the back of the queue for a blip of one member.
        ``timeout`` bounds that too; ``cancel`` is seen within ``_WAKE_INTERVAL`` while a watch
        is open, and after at most one call bound while a call or a watch's opening is pending.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        stream: WatchStream | None = None
        watched: frozenset[str] = frozenset()
        backoff = _REWATCH_BACKOFF[0]
        try:
            view = self._enter_with_priority() if self._priority else self._enter()
            while (token := self._holding_token(view.entries)) is None:
                ahead = self._keys_ahead(view.entries)
                if stream is None or ahead != watched:
                    # Only a waiter watches, only the keys that can make it a holder, and the
                    # watch exists before the read that it follows.
                    if stream is not None:
                        stream.close()
                        stream = None
                    try:
                        stream = self._watch_deletions(ahead, deadline)
                    except WatchBrokenError:
                        # Read again before the next watch: the slot may have come meanwhile,
                        # and a cluster that cannot answer ends the wait with the read's error.
                        self._pause(backoff, deadline, cancel)
                        backoff = min(backoff * 2, _REWATCH_BACKOFF[1])
                        view = self._look_again()
                        continue
                    watched = ahead
                    backoff = _REWATCH_BACKOFF[0]
                    view = self._look_again()
                    continue
                try:
                    self._wait_for_deletion(stream, watched, view, deadline, cancel)
                except WatchBrokenError:
                    stream.close()
                    stream = None
                    continue
                view = self._look_again()
        except BaseException:
            self._leave()
            raise
        finally:
            if stream is not None:
                stream.close()
        self.token = token
        return token

    def release(self) -> None:
        """Give the slot (or the place in the queue) back at once."""
        self.token = None
        self.created = None
        self._client.delete(self.key)

    def is_held(self) -> bool:
        """Whether this contender still holds: it has a token and its lease is alive."""
        if self.token is None:
            return False
        try:
            self._lease.check()
        except LeaseLostError:
            self.token = None
            return False
        return True

    @property
    def revision(self) -> int:
        """The revision we learnt that we hold at, the semaphore's token; only while holding."""
        if self.token is None:
            raise ValueError(f"{self.key} holds no slot")
        return self.token

    def held_condition(self) -> Any:
        """A transaction compare that holds only while our slot is still ours.

        Put it in the transaction that starts work under the lock: the local lease can be lost
        (revoked, or expired while the process was stopped) without this process knowing yet.
        """
        if self.token is None or self.created is None:
            raise ValueError(f"{self.key} holds no slot")
        return Compare.create_revision(self.key, self.created)

    def still_held(self) -> bool:
        """Whether etcd still has our key as we were granted it (one read)."""
        if self.token is None:
            return False
        kv, _ = self._client.get(self.key)
        return kv is not None and kv.create_revision == self.created

    def contenders(self) -> list[Contender]:
        """Everyone in the domain, in grant order: holders first, then the queue."""
        return read_contenders(self._client, self._prefix, self.capacity)

    def _enter(self) -> _View:
        """Put our waiter key if it is not there yet and read the queue, in one transaction."""
        read = Op.get_prefix(self._prefix)
        result = self._client.txn(
            compare=[Compare.missing(self.key)],
            success=[Op.put(self.key, self._value, self._lease.id), read],
            failure=[read],
        )
        return self._seen(result.ranges[0], result.revision)

    def _enter_with_priority(self) -> _View:
        """Put our key ahead of the waiting ordinary keys, behind every holder.

        From a read at revision R: the transaction puts the key only if no key was created
        since R and every holder seen at R still exists, so the order read is still the order,
        and the new key ranks behind every holder (see the module docstring). On a conflict
        the failed transaction's read is the next attempt's.
        """
        view = self._view()
        for _ in range(_ENTRY_ATTEMPTS):
            entries = view.entries
            if any(entry.kv.key == self.key for entry in entries):
                return view  # a retried transaction that had gone through
            self._value = priority_value(self._owner, entries, self.capacity)
            read = Op.get_prefix(self._prefix)
            result = self._client.txn(
                compare=[
                    Compare.none_created_after(self._prefix, view.revision),
                    *(
                        Compare.create_revision(entry.kv.key, entry.kv.create_revision)
                        for entry in entries[: self.capacity]
                    ),
                ],
                success=[Op.put(self.key, self._value, self._lease.id), read],
                failure=[read],
            )
            view = self._seen(result.ranges[0], result.revision)
            if result.succeeded:
                return view
        raise EntryConflictError(f"{self.key}: the domain changed under {_ENTRY_ATTEMPTS} entries")

    def _look_again(self) -> _View:
        """Read the queue, rewriting our key in the same transaction (see the module docstring).

        The rewrite keeps value and lease; its revision is the token if the read finds that we
        hold. A key that is gone is not written again (the read then says we lost it).
        """
        if self.created is None:
            return self._view()
        read = Op.get_prefix(self._prefix)
        result = self._client.txn(
            compare=[Compare.create_revision(self.key, self.created)],
            success=[Op.put(self.key, self._value, self._lease.id), read],
            failure=[read],
        )
        return self._seen(result.ranges[-1], result.revision)

    def _seen(self, kvs: list[KeyValue], revision: int) -> _View:
        """A read of the queue, in grant order; notes our key's create revision."""
        entries = ordered(kvs)
        mine = next((entry.kv for entry in entries if entry.kv.key == self.key), None)
        if mine is not None:
            self.created = mine.create_revision
        return _View(entries, revision)

    def _holding_token(self, entries: list[Entry]) -> int | None:
        position = self._position(entries)
        return entries[position].kv.mod_revision if position < self.capacity else None

    def _position(self, entries: list[Entry]) -> int:
        for index, entry in enumerate(entries):
            if entry.kv.key == self.key:
                return index
        self._lease.check()
        raise LeaseLostError(f"waiter key {self.key} vanished")

    def _keys_ahead(self, entries: list[Entry]) -> frozenset[str]:
        """The k keys just ahead of ours: only the deletion of one of them can make us hold.

        A deletion further ahead leaves these k keys ahead of us, and a key put ahead of us
        only pushes us back. So for k = 1 a release wakes only the next waiter.
        """
        position = self._position(entries)
        return frozenset(entry.kv.key for entry in entries[position - self.capacity : position])

    def _watch_deletions(self, keys: frozenset[str], deadline: float | None) -> WatchStream:
        """A synced watch of the deletion of ``keys``, acknowledged before we read.

        Exact keys, not the domain's prefix: a release then delivers one event to the one
        waiter it concerns (k = 1), not one to every waiter. The wait for the acknowledgement
        ends with the caller's deadline (a healthy member acknowledges well within
        ``MIN_ATTEMPT_TIMEOUT``, so a short remainder does not make a healthy member look
        hung), and at the latest after a whole call bound, like any call. Raises
        ``WatchBrokenError`` if the watch broke or was not acknowledged in time.
        """
        limit = self._client.settings.total_timeout
        if deadline is not None:
            limit = min(limit, max(deadline - time.monotonic(), MIN_ATTEMPT_TIMEOUT))
        stream = self._client.watch(keys=sorted(keys), deletes_only=True)
        try:
            stream.wait_created(limit)
        except WatchBrokenError:
            stream.close()
            raise
        return stream

    def _view(self) -> _View:
        result = self._client.get_prefix(self._prefix)
        return self._seen(result.kvs, result.revision)

    def _wait_for_deletion(
        self,
        stream: WatchStream,
        watched: frozenset[str],
        view: _View,
        deadline: float | None,
        cancel: threading.Event | None,
    ) -> None:
        """Block until one of the ``watched`` keys is deleted after ``view`` was read."""
        while True:
            events = stream.next(timeout=self._next_wake(deadline, cancel)) or []
            if any(e.key in watched and e.mod_revision > view.revision for e in events):
                return

    def _next_wake(self, deadline: float | None, cancel: threading.Event | None) -> float:
        """How long a wait may block before looking again; raises when the wait must end.

        One place for the reasons to stop waiting (cancel, lost lease, timeout), so that every
        way of waiting honours them the same, and within ``_WAKE_INTERVAL``.
        """
        if cancel is not None and cancel.is_set():
            raise AcquireCancelledError
        self._lease.check()
        wait = _WAKE_INTERVAL
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"lock not acquired within the timeout ({self.key})")
        return wait

    def _pause(
        self, seconds: float, deadline: float | None, cancel: threading.Event | None
    ) -> None:
        """Sleep ``seconds`` (no request), ending early with ``_next_wake``'s errors."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(self._next_wake(deadline, cancel), left))
        self._next_wake(deadline, cancel)

    def _leave(self) -> None:
        """Remove our waiter key after a failed acquire, if etcd can be reached at all."""
        self.token = None
        self.created = None
        try:
            self._client.delete(self.key)
        except Exception:
            return


@dataclass(frozen=True)
class _View:
    entries: list[Entry]
    revision: int
