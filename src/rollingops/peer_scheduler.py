"""The peer backend's scheduler: pure functions the leader applies to the peer databags.

Inputs are every unit's queue (each unit publishes its own) and the grants the leader published
before; the output is the new set of grants. Rules (design §7):

- an operation that is *running* on a unit (claimed, not finished) holds a slot, whoever
  granted it: etcd before a fallback, a previous leader, this leader. It keeps (or gets) its
  grant first, even beyond capacity, so at no instant do more than k units run;
- then, while slots are free: first-time requests, oldest first; then retry-release requests,
  oldest first (a retry-hold never leaves its slot: it stays running);
- a departed unit's grant is released; a grant is released once its unit has finished the
  operation (it is no longer running, nor waiting at the head of its queue);
- fencing tokens come from one counter kept with the grants (never below a token a grant or a
  queue shows); a re-granted running operation keeps its token;
- a pause grants nothing new (running operations keep their grants); a revoked operation (the
  operator's ``force-release``) holds no slot, and its unit ends it as ``revoked``.

Nothing here compares clocks of different units to expire anything: a grant ends only when its
unit reports the operation finished or leaves. ``requested_at`` only orders requests.

What a unit publishes (``published_queue``) leaves out the claim of its grant: every write to a
unit's peer bag is a hook on every other unit, and a claim changes nothing the leader decides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from .backend_choice import Backend
from .models import Claim, Operation, Outcome, UnitQueue


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


@dataclass(frozen=True)
class Revocation:
    """The operator took the lock from a unit's operation granted under ``token``.

    ``op_id`` names the operation when it was granted but not claimed (its unit may be down):
    it then ends ``revoked`` from the head of the queue, and is not granted again.
    """

    token: int
    reason: str
    op_id: str = ""


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
    *,
    paused: bool = False,
    revoked: Mapping[str, Revocation] | None = None,
) -> Schedule:
    """One pass: keep what must stay granted, then fill free slots by priority."""
    next_token = max(
        next_token,
        _highest_token(queues) + 1,
        max((g.token for g in grants.values()), default=0) + 1,
    )
    kept: dict[str, PeerGrant] = {}
    for unit, queue in queues.items():
        grant = grants.get(unit)
        revocation = (revoked or {}).get(unit)
        if is_revoked(queue, revocation) or _grant_revoked(grant, revocation):
            continue  # the operator took its slot; its unit ends it
        if grant is not None and _still_needed(grant, queue):
            kept[unit] = grant
        elif queue.current is not None:
            # Running without a grant of ours (granted under etcd, or by a former leader).
            kept[unit] = PeerGrant(unit, queue.current.operation.id, queue.current.token)
    waiting = sorted(
        (
            unit
            for unit, queue in queues.items()
            if unit not in kept
            and queue.current is None
            and queue.pending
            and not is_revoked(queue, (revoked or {}).get(unit))
        ),
        key=lambda unit: (_priority(queues[unit].pending[0]), unit),
    )
    free = 0 if paused else max(capacity - len(kept), 0)
    for unit in waiting[:free]:
        head = queues[unit].pending[0]
        kept[unit] = PeerGrant(unit, head.id, next_token, head.attempt)
        next_token += 1
    return Schedule(kept, next_token)


def _highest_token(queues: Mapping[str, UnitQueue]) -> int:
    """Tokens seen in any queue (etcd's included), so peer tokens keep increasing after them."""
    tokens = [q.highest_token for q in queues.values()]
    tokens += [e.token for q in queues.values() for e in q.history]
    tokens += [q.current.token for q in queues.values() if q.current is not None]
    return max(tokens, default=0)


def is_revoked(queue: UnitQueue, revocation: Revocation | None) -> bool:
    """Whether ``queue`` still holds the operation the operator force-released."""
    if revocation is None:
        return False
    if queue.current is not None:
        return queue.current.token == revocation.token
    return bool(queue.pending) and queue.pending[0].id == revocation.op_id


def _grant_revoked(grant: PeerGrant | None, revocation: Revocation | None) -> bool:
    return grant is not None and revocation is not None and grant.token == revocation.token


def unit_step(
    queue: UnitQueue,
    backend: Backend,
    grant: PeerGrant | None,
    revocation: Revocation | None,
    now: dt.datetime,
) -> UnitQueue:
    """Off etcd, a unit does the worker's part on its own queue, once per hook.

    A revoked operation ends ``revoked``; a reported result finishes the running operation
    (``retry-hold`` runs again under the same grant); otherwise a grant from the leader is
    claimed, but never in the same pass as a finish, so a ``retry-release`` really gives the
    lock back before the leader grants again, and never with a token at or below one this
    queue already had (fencing tokens only rise).
    """
    current = queue.current
    if revocation is not None and is_revoked(queue, revocation):
        reason = f"force-released: {revocation.reason}"
        if current is not None:
            return queue.abandon(Outcome.REVOKED, reason, now)
        return queue.cancel(queue.pending[0].id, reason, now, outcome=Outcome.REVOKED)
    if current is not None and current.result is not None:
        return queue.finish(now)[0]
    if backend is Backend.PEER and grant is not None and is_claimable(grant, queue):
        if grant.token <= queue.highest_token:
            return queue  # a stale or forged grant: tokens only ever rise on a unit
        return queue.claim(grant.token, now)
    return queue


def published_queue(
    queue: UnitQueue, grant: PeerGrant | None, before: UnitQueue | None
) -> UnitQueue:
    """A unit's queue as it publishes it under peer: as it was before it claimed its grant.

    Each write to a unit's peer bag costs a hook on every other unit. The leader keeps a grant
    alike whether its operation waits at the head or runs (``_still_needed``), counts it
    against k alike, and revokes it alike (the revocation names the operation): the claim
    tells it nothing. So the claimed operation is shown back at the head with the attempt it
    was granted at, and the unit's next write is the operation's end, retry or revocation.

    The highest token shown is the one published ``before`` (the claimed token is this
    leader's own, below its ``next-token``), never above the queue's own. A running operation
    under any other token (etcd's, a withdrawn grant's, a retry-hold's next attempt) is shown.
    """
    claim = queue.current
    if grant is None or claim is None or not _runs_grant(claim, grant):
        return queue
    shown = max(
        min(queue.highest_token, before.highest_token if before is not None else 0),
        max((entry.token for entry in queue.history), default=0),
    )
    unclaimed = claim.operation.model_copy(update={"attempt": grant.attempt})
    return queue.model_copy(
        update={"current": None, "pending": (unclaimed, *queue.pending), "highest_token": shown}
    )


def _runs_grant(claim: Claim, grant: PeerGrant) -> bool:
    """Whether ``claim`` is the first run of ``grant`` (claiming adds one to the attempt)."""
    op = claim.operation
    return (
        claim.token == grant.token
        and op.id == grant.op_id
        and op.attempt == grant.attempt + 1
        and claim.result is None
    )
