"""The peer backend's scheduler: pure functions the leader applies to the peer databags.

Inputs are every unit's queue (each unit publishes its own) and the grants the leader published
before; the output is the new set of grants. Rules (DESIGN §7):

- an operation that is *running* on a unit (claimed, not finished) holds a slot, whoever
  granted it: etcd before a fallback, a previous leader, this leader. It keeps (or gets) its
  grant first, even beyond capacity, so at no instant do more than k units run;
- then, while slots are free: first-time requests, oldest first; then retry-release requests,
  oldest first (a retry-hold never leaves its slot: it stays running);
- a departed unit's grant is released; a grant is released once its unit has finished the
  operation (it is no longer running, nor waiting at the head of its queue);
- fencing tokens come from one counter kept with the grants; a re-granted running operation
  keeps its token.

Nothing here compares clocks of different units to expire anything: a grant ends only when its
unit reports the operation finished or leaves. ``requested_at`` only orders requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .models import Operation, UnitQueue


@dataclass(frozen=True)
class PeerGrant:
    """The leader's permission for ``unit`` to run ``op_id`` under ``token``."""

    unit: str
    op_id: str
    token: int
    attempt: int = 0
    """The operation's attempt count when granted: once claimed and released for a retry, the
    same operation waits again with a higher count, and this grant no longer stands."""


@dataclass(frozen=True)
class Schedule:
    """Grants after one scheduling pass, and the next token to hand out."""

    grants: dict[str, PeerGrant]
    next_token: int


def _still_needed(grant: PeerGrant, queue: UnitQueue) -> bool:
    """A grant stands while its operation runs, or waits at the head to be claimed.

    Not once the operation ran and was released to retry (``retry-release``): it then waits
    at the head again, but with a higher attempt count, behind every first-time request.
    """
    if queue.current is not None:
        return queue.current.operation.id == grant.op_id
    return is_claimable(grant, queue)


def is_claimable(grant: PeerGrant, queue: UnitQueue) -> bool:
    """Whether ``queue`` may claim ``grant`` now: the granted attempt waits at its head."""
    if queue.current is not None or not queue.pending:
        return False
    head = queue.pending[0]
    return head.id == grant.op_id and head.attempt == grant.attempt


def _priority(op: Operation) -> tuple[int, object, str]:
    """First-time requests before retry-release ones; oldest first within each."""
    return (0 if op.attempt == 0 else 1, op.requested_at, op.id)


def schedule(
    queues: Mapping[str, UnitQueue],
    grants: Mapping[str, PeerGrant],
    capacity: int,
    next_token: int,
) -> Schedule:
    """One pass: keep what must stay granted, then fill free slots by priority."""
    next_token = max(next_token, _highest_token(queues) + 1)
    kept: dict[str, PeerGrant] = {}
    for unit, queue in queues.items():
        grant = grants.get(unit)
        if grant is not None and _still_needed(grant, queue):
            kept[unit] = grant
        elif queue.current is not None:
            # Running without a grant of ours (granted under etcd, or by a former leader).
            kept[unit] = PeerGrant(unit, queue.current.operation.id, queue.current.token)
    waiting = sorted(
        (unit for unit, queue in queues.items() if unit not in kept and queue.pending),
        key=lambda unit: (_priority(queues[unit].pending[0]), unit),
    )
    for unit in waiting[: max(capacity - len(kept), 0)]:
        head = queues[unit].pending[0]
        kept[unit] = PeerGrant(unit, head.id, next_token, head.attempt)
        next_token += 1
    return Schedule(kept, next_token)


def _highest_token(queues: Mapping[str, UnitQueue]) -> int:
    """Tokens seen in any queue (etcd's included), so peer tokens keep increasing after them."""
    tokens = [e.token for q in queues.values() for e in q.history]
    tokens += [q.current.token for q in queues.values() if q.current is not None]
    return max(tokens, default=0)
