"""The per-unit operation queue in etcd: one key per unit, every transition one transaction.

A transition is a pure function on ``UnitQueue`` (see ``models``). ``update`` applies it with an
optimistic compare-and-swap on the key's mod revision; when another writer got there first, the
failed transaction already returns the current value, so a retry costs no extra read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from .etcd_client import (
    Compare,
    EtcdClient,
    EtcdError,
    EventKind,
    KeyValue,
    Op,
    WatchBrokenError,
    WatchEvent,
    WatchStream,
)
from .models import UnitQueue

_MAX_CONFLICTS = 16


class StoreConflictError(EtcdError):
    """Too many concurrent writers on one unit's queue; nothing was written."""


class ConditionFailedError(Exception):
    """A caller's extra condition failed (the queue itself was current); nothing was written.

    For the worker: the lock, the pause or the token floor is not what it read, so the claim it
    tried must not happen.
    """


class CorruptQueueError(ValueError):
    """The stored queue is not a valid ``UnitQueue``; the charm must write it again."""

    def __init__(self, key: str, revision: int, error: ValidationError) -> None:
        super().__init__(f"{key} holds an invalid queue: {error.error_count()} errors")
        self.revision = revision


@dataclass(frozen=True)
class QueueSnapshot:
    """A unit's queue as read at ``revision``; ``mod_revision`` 0 means no key yet."""

    queue: UnitQueue
    mod_revision: int
    revision: int


def waiters_prefix(prefix: str) -> str:
    """Keys of the lock domain's semaphore (``prefix``: the domain's keys, per cluster-id)."""
    return f"{prefix}waiters/"


def queue_key(prefix: str, unit: str) -> str:
    """Key of one unit's queue (unit names are ``app/N``: the last two segments)."""
    return f"{prefix}queues/{unit}"


def _snapshot(kv: KeyValue | None, revision: int) -> QueueSnapshot:
    if kv is None:
        return QueueSnapshot(UnitQueue(), 0, revision)
    return _parse(kv.key, kv.value, kv.mod_revision, revision)


def _parse(key: str, value: bytes, mod_revision: int, revision: int) -> QueueSnapshot:
    try:
        queue = UnitQueue.model_validate_json(value)
    except ValidationError as error:
        raise CorruptQueueError(key, revision, error) from error
    return QueueSnapshot(queue, mod_revision, revision)


class QueueStore(Protocol):
    """Where one unit's authoritative queue lives: ``OperationStore`` (etcd), or a model."""

    def load(self) -> QueueSnapshot:
        """The queue now."""
        ...

    def update(
        self,
        change: Callable[[UnitQueue], UnitQueue],
        known: QueueSnapshot | None = None,
        conditions: Sequence[Any] = (),
    ) -> QueueSnapshot:
        """Apply ``change`` atomically; return the queue as written."""
        ...


class OperationStore:
    """Read, change and watch one unit's queue."""

    def __init__(self, client: EtcdClient, prefix: str, unit: str) -> None:
        self._client = client
        self.key = client.check_key(queue_key(prefix, unit))

    def load(self) -> QueueSnapshot:
        """The queue as it is now."""
        kv, revision = self._client.get(self.key)
        return _snapshot(kv, revision)

    def update(
        self,
        change: Callable[[UnitQueue], UnitQueue],
        known: QueueSnapshot | None = None,
        conditions: Sequence[Any] = (),
    ) -> QueueSnapshot:
        """Apply ``change`` atomically; return the queue as written.

        ``known`` is the caller's latest snapshot: when it is still current, the transition
        costs exactly one transaction. ``conditions`` (``Compare``s on other keys) go into the
        same transaction, so the write proves them at its own revision; when one fails while the
        queue was current, ``ConditionFailedError`` is raised and nothing is written.
        """
        current = known or self.load()
        for _ in range(_MAX_CONFLICTS):
            new = change(current.queue)
            if new == current.queue:
                return current
            guard = (
                Compare.missing(self.key)
                if current.mod_revision == 0
                else Compare.mod_revision(self.key, current.mod_revision)
            )
            result = self._client.txn(
                compare=[guard, *conditions],
                success=[Op.put(self.key, new.to_json().encode())],
                failure=[Op.get(self.key)],
            )
            if result.succeeded:
                return QueueSnapshot(new, result.revision, result.revision)
            kvs = result.ranges[0]
            fresh = _snapshot(kvs[0] if kvs else None, result.revision)
            if fresh.mod_revision == current.mod_revision:
                raise ConditionFailedError(f"{self.key}: a condition of the write failed")
            current = fresh
        raise StoreConflictError(f"{self.key}: {_MAX_CONFLICTS} concurrent writes in a row")

    def clear(self) -> None:
        """Remove the unit's queue from etcd (it stays in the peer databag)."""
        self._client.delete(self.key)

    def watch(self, after: QueueSnapshot) -> QueueWatch:
        """Follow the queue from just after ``after``; one stream for as long as it lives."""
        return QueueWatch(self, after)

    def parse_event(self, event: WatchEvent) -> QueueSnapshot:
        """The queue as a watch event shows it."""
        if event.kind is EventKind.DELETE:
            return QueueSnapshot(UnitQueue(), 0, event.mod_revision)
        return _parse(self.key, event.value, event.mod_revision, event.mod_revision)

    def open_stream(self, after: QueueSnapshot) -> WatchStream:
        """A raw watch on the queue key from the revision after ``after``."""
        return self._client.watch([self.key], start_revision=after.revision + 1)


class QueueWatch:
    """Changes of one unit's queue, newer than what the caller already knows.

    The worker's own writes come back as events too; they are skipped by comparing mod
    revisions. A broken stream is replaced after a fresh read, never trusted.
    """

    def __init__(self, store: OperationStore, after: QueueSnapshot) -> None:
        self._store = store
        self._stream = store.open_stream(after)

    def next_change(
        self, known: QueueSnapshot, timeout: float | None, stop: threading.Event
    ) -> QueueSnapshot | None:
        """The queue once it differs from ``known``; ``None`` on timeout or ``stop``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop.is_set():
            wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                events = self._stream.next(timeout=wait)
            except WatchBrokenError:
                return self._reopen(known)
            newer = [event for event in events or () if event.mod_revision > known.mod_revision]
            if newer:
                return self._store.parse_event(newer[-1])
        return None

    def _reopen(self, known: QueueSnapshot) -> QueueSnapshot | None:
        self._stream.close()
        fresh = self._store.load()
        self._stream = self._store.open_stream(fresh)
        return fresh if fresh.mod_revision != known.mod_revision else None

    def close(self) -> None:
        """End the stream."""
        self._stream.close()
