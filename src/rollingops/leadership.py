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

from pydantic import BaseModel, ConfigDict, Field

from .backend_choice import Backend, Fallback, Health, choose
from .control import Pause
from .models import UnitQueue
from .peer_scheduler import Revocation, Schedule, is_revoked, schedule

PEER_TOKEN_SHIFT = 40
MAX_EPOCH = 2**22
"""Backend switches an application can make (millions); peer tokens stay below 2**62."""


class Decision(BaseModel):
    """The leader's published choice of backend, for one epoch."""

    model_config = ConfigDict(frozen=True)

    backend: Backend
    epoch: int = Field(ge=0, le=MAX_EPOCH)
    reason: str = Field(max_length=1024)
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
    decision_unreadable: bool = False
    """The published decision exists but cannot be read: nobody knows which backend granted
    last, so the leader decides anew as if returning from peer (it fences first)."""

    @property
    def backend(self) -> Backend:
        """The backend decided: etcd until the leader has decided anything."""
        return Backend.ETCD if self.decision is None else self.decision.backend

    @property
    def epoch(self) -> int:
        """The current epoch (0 before any decision; past every unit's, if unreadable)."""
        if self.decision is not None:
            return self.decision.epoch
        return max(self.epochs.values(), default=0) if self.decision_unreadable else 0

    def highest_token(self) -> int:
        """The highest fencing token the peer data knows of: next-token's and every queue's."""
        tokens = [self.schedule.next_token - 1, *(q.highest_token for q in self.queues.values())]
        tokens += [e.token for q in self.queues.values() for e in q.history]
        return max(tokens)


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
    returning = chosen is Backend.ETCD and (
        state.decision_unreadable or current in (Backend.PEER, Backend.NONE)
    )
    if returning and not fence(max(state.highest_token(), 0)):
        # Not before etcd's tokens are known to exceed the peer's.
        chosen = current if current is not None else Backend.NONE
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
    """Revocations whose operation is still in its unit's queue, or still granted."""
    kept: dict[str, Revocation] = {}
    for unit, revocation in state.revoked.items():
        grant = state.schedule.grants.get(unit)
        granted = grant is not None and grant.token == revocation.token
        if granted or is_revoked(state.queues.get(unit, UnitQueue()), revocation):
            kept[unit] = revocation
    return kept


def _reason(backend: Backend, health: Health) -> str:
    if backend is Backend.ETCD:
        return "etcd is healthy"
    if health.etcd_failed:
        return "a worker gave up on etcd"
    return "etcd is not usable (no relation, no credentials or invalid config)"
