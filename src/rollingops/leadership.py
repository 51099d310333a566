"""The leader's pass over the peer data: which backend, and under peer, which grants.

A pure function of what the peer relation says (``PeerState``) and what the leader knows of
etcd; the charm reads the databags into a ``PeerState``, calls ``lead`` and writes the result
back. The switching model (tests) drives this same function.

The rules it keeps:

- the backend follows ``backend_choice.choose``; returning to etcd from peer waits until etcd's
  fencing tokens are known to exceed every peer token (``fence``), so tokens keep rising;
- a switch starts a new *epoch*. Under peer, nothing new is granted until every unit has
  published its queue for the current epoch: an operation still running from an etcd grant is
  only known once its unit has published it, and granting before that could run k + 1;
- the pass after a switch grants nothing (the units have not published for it yet);
- off peer, the peer grants are withdrawn;
- revocations (force-release under peer) are kept only while their operation still runs;
- fencing tokens keep rising across switches. Peer tokens of epoch *e* start at
  ``e << PEER_TOKEN_SHIFT``: above any token etcd handed out before, which the leader cannot
  ask a lost etcd for and which a departed unit may have taken with it (etcd tokens are
  revisions plus the floor, and revisions stay far below 2**40). Back on etcd, the floor is
  raised past the peer's tokens first (``fence``), and the next peer epoch is higher again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from .backend_choice import Backend, Fallback, Health, choose
from .control import Pause
from .models import UnitQueue
from .peer_scheduler import Revocation, Schedule, is_revoked, schedule

PEER_TOKEN_SHIFT = 40


class Decision(BaseModel):
    """The leader's published choice of backend, for one epoch."""

    model_config = ConfigDict(frozen=True)

    backend: Backend
    epoch: int
    reason: str
    since: dt.datetime


@dataclass(frozen=True)
class PeerState:
    """Everything the peer relation says, as the leader reads it."""

    decision: Decision | None = None
    schedule: Schedule = field(default_factory=lambda: Schedule({}, 1))
    queues: Mapping[str, UnitQueue] = field(default_factory=dict[str, UnitQueue])
    """Each unit's published queue (published while the backend is not etcd)."""
    epochs: Mapping[str, int] = field(default_factory=dict[str, int])
    """The epoch each unit last published its queue for."""
    etcd_failed: frozenset[str] = frozenset()
    """Units whose worker gave up on etcd."""
    pause: Pause | None = None
    """The operator's pause under the peer backend."""
    revoked: Mapping[str, Revocation] = field(default_factory=dict[str, Revocation])

    @property
    def backend(self) -> Backend:
        """The backend decided: etcd until the leader has decided anything."""
        return Backend.ETCD if self.decision is None else self.decision.backend

    @property
    def epoch(self) -> int:
        """The current epoch (0 before any decision)."""
        return 0 if self.decision is None else self.decision.epoch


@dataclass(frozen=True)
class Leadership:
    """What the leader knows beyond the peer data."""

    members: frozenset[str]
    """Every unit of the application now, the leader included."""
    etcd_usable: bool
    fallback: Fallback
    capacity: int


@dataclass(frozen=True)
class LeaderStep:
    """The peer data after one pass, and whether it changed anything a unit acts on."""

    decision: Decision
    schedule: Schedule
    revoked: Mapping[str, Revocation]
    changed: bool
    """A new decision or new grants: units must sync again."""


def lead(
    state: PeerState, known: Leadership, fence: Callable[[int], bool], now: dt.datetime
) -> LeaderStep:
    """One leader pass; ``fence(token)`` raises etcd's token floor past ``token`` if it can."""
    current = state.decision.backend if state.decision else None
    health = Health(
        etcd_usable=known.etcd_usable,
        etcd_failed=bool(state.etcd_failed & known.members),
        peer_busy=bool(state.schedule.grants) or any(q.has_work for q in state.queues.values()),
    )
    chosen = choose(current, health, known.fallback)
    returning = chosen is Backend.ETCD and current is not None and current is not Backend.ETCD
    if returning and current is not None and not fence(max(state.schedule.next_token - 1, 0)):
        chosen = current  # not before etcd's tokens are known to exceed the peer's
    revoked = _still_revoked(state)
    if state.decision is None or chosen is not current:
        decision = Decision(
            backend=chosen, epoch=state.epoch + 1, reason=_reason(chosen, health), since=now
        )
        next_token = state.schedule.next_token
        if chosen is Backend.PEER:
            next_token = max(next_token, decision.epoch << PEER_TOKEN_SHIFT)
        return LeaderStep(decision, Schedule({}, next_token), revoked, changed=True)
    if chosen is not Backend.PEER:
        return LeaderStep(state.decision, Schedule({}, state.schedule.next_token), {}, False)
    if not all(state.epochs.get(m) == state.epoch for m in known.members):
        return LeaderStep(state.decision, state.schedule, revoked, changed=False)
    new = schedule(
        state.queues,
        state.schedule.grants,
        known.capacity,
        state.schedule.next_token,
        paused=state.pause is not None,
        revoked=revoked,
    )
    return LeaderStep(state.decision, new, revoked, changed=new.grants != state.schedule.grants)


def _still_revoked(state: PeerState) -> dict[str, Revocation]:
    return {
        unit: revocation
        for unit, revocation in state.revoked.items()
        if is_revoked(state.queues.get(unit, UnitQueue()), revocation)
    }


def _reason(backend: Backend, health: Health) -> str:
    if backend is Backend.ETCD:
        return "etcd is healthy"
    if health.etcd_failed:
        return "a worker gave up on etcd"
    return "etcd is not usable (no relation, no credentials or invalid config)"
