"""A fair, fenced semaphore of size k on etcd (k = 1 is a mutex).

Recipe: each contender puts ``<waiters>/<lease-id>`` bound to its lease. Contenders are ordered
by the key's create revision; the first k hold. A waiter at position i >= k watches the k keys
just ahead of it (only deletions) and re-reads when one goes: a deletion further ahead cannot
make it a holder, since the k keys ahead of it stay the same. No polling, no thundering herd
for k = 1, FIFO by construction.

The semaphore's token is the holder key's create revision: etcd revisions only grow, and holders
are granted in create-revision order, so tokens strictly increase per domain. The worker's
fencing token adds the domain's token floor to it (see ``control.GrantState``), so that tokens
keep increasing across backend switches. A protected resource that remembers the highest token
it has seen can refuse a stale holder.

Holding is a local belief until a transaction proves it: ``held_condition`` is the compare that
does (the key still exists with the create revision we were granted under). Since every new
waiter key gets a higher create revision, a key that still exists with the same one has kept
its place within the first k.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .etcd_client import (
    MIN_ATTEMPT_TIMEOUT,
    Compare,
    EtcdClient,
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


@dataclass(frozen=True)
class Contender:
    """A key in the waiters list: its owner and its place in the order."""

    owner: str
    token: int
    holding: bool
    lease: int


def read_contenders(client: EtcdClient, waiters_prefix: str, capacity: int) -> list[Contender]:
    """Everyone in a domain, in grant order: the ``capacity`` holders first, then the queue."""
    return contenders_of(client.get_prefix(waiters_prefix).kvs, capacity)


def contenders_of(kvs: list[KeyValue], capacity: int, floor: int = 0) -> list[Contender]:
    """Contenders from a read of the waiters range, tokens raised by the domain's ``floor``."""
    return [
        Contender(kv.value.decode(), floor + kv.create_revision, index < capacity, kv.lease)
        for index, kv in enumerate(kvs)
    ]


class FairSemaphore:
    """k holders at most among every contender on ``waiters_prefix``, first come first served."""

    def __init__(
        self,
        client: EtcdClient,
        waiters_prefix: str,
        capacity: int,
        lease: Lease,
        owner: str,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._client = client
        self._prefix = client.check_key(waiters_prefix)
        self.capacity = capacity
        self._lease = lease
        self._owner = owner
        self.key = f"{waiters_prefix}{lease.id:016x}"
        self.token: int | None = None

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
        backoff = _REWATCH_BACKOFF[0]
        try:
            view = self._enter()
            while (token := self._holding_token(view.kvs)) is None:
                if stream is None:
                    # Only a waiter watches; the watch exists before the read that it follows.
                    try:
                        stream = self._watch_deletions(deadline)
                    except WatchBrokenError:
                        # Read again before the next watch: the slot may have come meanwhile,
                        # and a cluster that cannot answer ends the wait with the read's error.
                        self._pause(backoff, deadline, cancel)
                        backoff = min(backoff * 2, _REWATCH_BACKOFF[1])
                        view = self._view()
                        continue
                    backoff = _REWATCH_BACKOFF[0]
                    view = self._view()
                    continue
                try:
                    self._wait_for_deletion(stream, view, deadline, cancel)
                except WatchBrokenError:
                    stream.close()
                    stream = None
                    continue
                view = self._view()
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
        """Create revision of our key, the semaphore's token; only while we hold a slot."""
        if self.token is None:
            raise ValueError(f"{self.key} holds no slot")
        return self.token

    def held_condition(self) -> Any:
        """A transaction compare that holds only while our slot is still ours.

        Put it in the transaction that starts work under the lock: the local lease can be lost
        (revoked, or expired while the process was stopped) without this process knowing yet.
        """
        return Compare.create_revision(self.key, self.revision)

    def still_held(self) -> bool:
        """Whether etcd still has our key as we were granted it (one read)."""
        if self.token is None:
            return False
        kv, _ = self._client.get(self.key)
        return kv is not None and kv.create_revision == self.token

    def contenders(self) -> list[Contender]:
        """Everyone in the domain, in grant order: holders first, then the queue."""
        return read_contenders(self._client, self._prefix, self.capacity)

    def _enter(self) -> _View:
        """Put our waiter key if it is not there yet and read the queue, in one transaction."""
        read = Op.get_prefix(self._prefix)
        result = self._client.txn(
            compare=[Compare.missing(self.key)],
            success=[Op.put(self.key, self._owner.encode(), self._lease.id), read],
            failure=[read],
        )
        return _View(result.ranges[0], result.revision)

    def _holding_token(self, kvs: list[KeyValue]) -> int | None:
        position = self._position(kvs)
        return kvs[position].create_revision if position < self.capacity else None

    def _position(self, kvs: list[KeyValue]) -> int:
        for index, kv in enumerate(kvs):
            if kv.key == self.key:
                return index
        self._lease.check()
        raise LeaseLostError(f"waiter key {self.key} vanished")

    def _watch_deletions(self, deadline: float | None) -> WatchStream:
        """A synced watch of every deletion in the domain, acknowledged before we read.

        The wait for the acknowledgement ends with the caller's deadline (a healthy member
        acknowledges well within ``MIN_ATTEMPT_TIMEOUT``, so a short remainder does not make a
        healthy member look hung), and at the latest after a whole call bound, like any call.
        Raises ``WatchBrokenError`` if the watch broke or was not acknowledged in time.
        """
        limit = self._client.settings.total_timeout
        if deadline is not None:
            limit = min(limit, max(deadline - time.monotonic(), MIN_ATTEMPT_TIMEOUT))
        stream = self._client.watch(prefix=self._prefix, deletes_only=True)
        try:
            stream.wait_created(limit)
        except WatchBrokenError:
            stream.close()
            raise
        return stream

    def _view(self) -> _View:
        result = self._client.get_prefix(self._prefix)
        return _View(result.kvs, result.revision)

    def _wait_for_deletion(
        self,
        stream: WatchStream,
        view: _View,
        deadline: float | None,
        cancel: threading.Event | None,
    ) -> None:
        """Block until one of the k keys ahead of us is deleted after ``view`` was read.

        Deletions further ahead are ignored: they cannot make us a holder, since the k keys
        just ahead of us stay the same. So for k = 1 only the next waiter reads again.
        """
        position = self._position(view.kvs)
        ahead = {kv.key for kv in view.kvs[position - self.capacity : position]}
        while True:
            events = stream.next(timeout=self._next_wake(deadline, cancel)) or []
            if any(e.key in ahead and e.mod_revision > view.revision for e in events):
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
        try:
            self._client.delete(self.key)
        except Exception:
            return


@dataclass(frozen=True)
class _View:
    kvs: list[KeyValue]
    revision: int
