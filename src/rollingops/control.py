"""Operator control of a lock domain: pause, resume, force-release, and what the domain looks like.

A pause is one key, ``<domain>/paused``, holding who paused and why. Workers that get a slot
while it exists keep the slot but start nothing (no new grants) until it is removed; operations
already running finish normally. Force-release revokes the lease of a stuck holder: its waiter
key goes at once, the next waiter gets the slot, and the stuck worker learns from its lease that
it lost the lock (its fencing token is now stale).
"""

from __future__ import annotations

import datetime as dt
import threading

from pydantic import BaseModel, ConfigDict

from .etcd_client import EtcdClient, EventKind, WatchBrokenError
from .models import utcnow
from .semaphore import Contender, read_contenders
from .store import domain_prefix, waiters_prefix


class Pause(BaseModel):
    """Why the domain is paused, by whom, since when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str
    by: str
    since: dt.datetime


class DomainControl:
    """Pause state, holders and queue of one domain."""

    def __init__(self, client: EtcdClient, prefix: str, domain: str, capacity: int) -> None:
        self._client = client
        self._waiters = waiters_prefix(prefix, domain)
        self._capacity = capacity
        self.paused_key = client.check_key(f"{domain_prefix(prefix, domain)}paused")

    def contenders(self) -> list[Contender]:
        """Holders first, then waiters, in grant order."""
        return read_contenders(self._client, self._waiters, self._capacity)

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
        """Allow grants again; return whether the domain was paused."""
        return self._client.delete(self.paused_key) > 0

    def paused(self) -> Pause | None:
        """The current pause, if any."""
        kv, _ = self._client.get(self.paused_key)
        return None if kv is None else Pause.model_validate_json(kv.value)

    def force_release(self, owner: str) -> list[int]:
        """Revoke the lease of every holder owned by ``owner``; return their tokens."""
        released: list[int] = []
        for contender in self.contenders():
            if contender.holding and contender.owner == owner:
                self._client.revoke_lease(contender.lease)
                released.append(contender.token)
        return released

    def wait_while_paused(self, stop: threading.Event) -> Pause | None:
        """Return at once if not paused; otherwise block until resumed (or ``stop``).

        Returns the pause that was waited out, for the log.
        """
        kv, revision = self._client.get(self.paused_key)
        if kv is None:
            return None
        pause = Pause.model_validate_json(kv.value)
        while not stop.is_set():
            with self._client.watch([self.paused_key], start_revision=revision + 1) as stream:
                try:
                    while not stop.is_set():
                        events = stream.next(timeout=0.2) or []
                        if any(event.kind is EventKind.DELETE for event in events):
                            return pause
                except WatchBrokenError:
                    kv, revision = self._client.get(self.paused_key)
                    if kv is None:
                        return pause
        return pause
