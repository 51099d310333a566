"""An etcd lease kept alive from a thread, which notices and reports its own loss.

The lease is what makes a dead worker lose the lock after TTL, never later. It also tells a
paused (SIGSTOPped) holder that it is no longer holder when it resumes: the local monotonic
clock keeps running while the process is stopped, so the first tick after a resume sees that the
TTL has passed even before etcd answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .etcd_client import EtcdClient, EtcdError

logger = logging.getLogger(__name__)


class LeaseLostError(EtcdError):
    """The lease expired or was revoked: whatever it held is gone."""


class Lease:
    """One lease of ``ttl`` seconds, refreshed every ``ttl / 3`` until revoked or lost."""

    def __init__(
        self,
        client: EtcdClient,
        ttl: int,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self.ttl = ttl
        self._on_lost = on_lost
        # Counted from before the grant: a retried grant may confirm a lease that etcd granted
        # (and started to count down) at the first attempt, up to a whole call bound earlier.
        sent = time.monotonic()
        self.id = client.grant_lease(ttl)
        self._expires = sent + ttl
        self._stop = threading.Event()
        self._lost_reason = ""
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name="lease", daemon=True)
        self._thread.start()

    @property
    def lost_reason(self) -> str:
        """Why the lease was lost; empty while it is alive."""
        return self._lost_reason

    @property
    def expires(self) -> float:
        """The ``CLOCK_MONOTONIC`` time before which etcd cannot expire the lease.

        Its TTL counted from before the last refresh was sent: etcd counts from later.
        """
        return self._expires

    def check(self) -> None:
        """Raise ``LeaseLostError`` if the lease is lost or its TTL has passed unrefreshed."""
        if not self.lost.is_set() and time.monotonic() >= self._expires:
            self._mark_lost(f"not refreshed for {self.ttl}s")
        if self.lost.is_set():
            raise LeaseLostError(f"lease {self.id:x} lost: {self._lost_reason}")

    def _keep_alive(self) -> None:
        interval = self.ttl / 3
        while not self._stop.wait(interval):
            if time.monotonic() >= self._expires:
                self._mark_lost(f"not refreshed for {self.ttl}s")
                return
            sent = time.monotonic()
            try:
                remaining = self._client.keep_alive(self.id)
            except EtcdError as error:
                logger.warning("lease %x keep-alive failed: %s", self.id, error)
                continue
            except ValueError:  # the client was closed under us: nobody needs the lease now
                return
            if remaining <= 0:
                self._mark_lost("expired in etcd")
                return
            self._expires = sent + remaining

    def _mark_lost(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self._lost_reason = reason
        self.lost.set()
        logger.warning("lease %x lost: %s", self.id, reason)
        if self._on_lost is not None:
            self._on_lost(reason)

    def revoke(self) -> None:
        """Stop refreshing and revoke the lease, which deletes every key bound to it."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self._client.settings.total_timeout)
        if not self.lost.is_set():
            self._lost_reason = "revoked"
            self.lost.set()
            self._client.revoke_lease(self.id)
