"""Which backend the whole application uses: decided by the leader, published to every unit.

- etcd while it is related, configured, healthy and no worker has given up on it;
- on losing it: ``peer`` (keep going; each application becomes its own lock domain) or
  ``none`` (grant nothing until etcd is back), as the operator chose with ``fallback``;
- back to etcd only once the domain's peer queues are empty (nothing waiting, nothing running),
  so no operation granted under peer can overlap one granted under etcd.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Backend(str, enum.Enum):
    """Where the lock lives."""

    ETCD = "etcd"
    PEER = "peer"
    NONE = "none"


class Fallback(str, enum.Enum):
    """What the operator wants when etcd is lost: availability or cross-application safety."""

    PEER = "peer"
    NONE = "none"


@dataclass(frozen=True)
class Health:
    """What the leader knows about etcd and the peer queues."""

    etcd_usable: bool
    """Related, answered, credentials in place, config valid."""
    etcd_failed: bool
    """A worker reported that etcd stayed unreachable past its deadline."""
    peer_busy: bool
    """Some unit still has an operation waiting or running under the peer backend."""


def choose(current: Backend | None, health: Health, fallback: Fallback) -> Backend:
    """The backend for the next epoch (``current`` is None before the first decision)."""
    healthy = health.etcd_usable and not health.etcd_failed
    if current is Backend.ETCD or current is None:
        return Backend.ETCD if healthy else Backend(fallback.value)
    if healthy and not health.peer_busy:
        return Backend.ETCD
    if current is Backend.NONE and fallback is Fallback.PEER:
        return Backend.PEER
    if current is Backend.PEER and fallback is Fallback.NONE and not health.peer_busy:
        return Backend.NONE
    return current
