"""The peer relation's databags, read into the engine's ``PeerState`` and written back.

Peer application bag (the leader writes):
- ``backend``: ``{"backend": "etcd"|"peer"|"none", "epoch": N, "reason": "...", "since": ...}``;
- ``grants``: ``{unit: {"op-id": ..., "token": N, "attempt": A}}`` under the peer backend;
- ``next-token``: the next fencing token the leader hands out;
- ``pause``: the operator's pause under the peer backend (``{"reason", "by", "since"}``);
- ``revoked``: ``{unit: {"token": N, "reason": ...}}``, operations the operator force-released.

Peer unit bag (each unit writes its own):
- ``queue``: the unit's ``UnitQueue``, published while the backend is not etcd (under etcd,
  writing it would wake every other unit at each transition), with ``queue-epoch``: the
  backend epoch it was published for (see ``rollingops.leadership`` for why it matters);
- ``etcd-failed``: when this unit's worker gave up on etcd (cleared once etcd answers again).

Whatever is unreadable is left out and logged: a hostile or corrupt value never fails a hook.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TypeVar

import ops
from pydantic import ValidationError

from rollingops.control import Pause
from rollingops.leadership import Decision, LeaderStep, PeerState
from rollingops.models import UnitQueue, utcnow
from rollingops.peer_scheduler import PeerGrant, Revocation, Schedule

logger = logging.getLogger(__name__)
_M = TypeVar("_M", Decision, Pause)


def read(relation: ops.Relation, app: ops.Application, me: ops.Unit) -> PeerState:
    """Parse the peer relation as seen by this unit (its own bag and its peers')."""
    app_bag = relation.data[app]
    unreadable: list[str] = []
    queues: dict[str, UnitQueue] = {}
    epochs: dict[str, int] = {}
    failed: set[str] = set()
    for unit in (me, *relation.units):
        bag = relation.data[unit]
        if bag.get("queue-epoch", "").isdigit():
            epochs[unit.name] = int(bag["queue-epoch"])
        if bag.get("queue"):
            try:
                queues[unit.name] = UnitQueue.model_validate_json(bag["queue"])
            except ValidationError:
                unreadable.append(f"{unit.name} queue")
        if bag.get("etcd-failed"):
            failed.add(unit.name)
    decision = _model(app_bag, "backend", Decision, unreadable)
    pause = _model(app_bag, "pause", Pause, unreadable)
    schedule = _schedule(app_bag)
    if schedule is None:
        unreadable.append("grants")
        schedule = Schedule({}, 1)
    revoked = _revoked(app_bag)
    if revoked is None:
        unreadable.append("revoked")
    if unreadable:
        logger.warning("peer relation data unreadable, ignored: %s", ", ".join(unreadable))
    return PeerState(decision, schedule, queues, epochs, frozenset(failed), pause, revoked or {})


def _model(bag: Mapping[str, str], key: str, model: type[_M], unreadable: list[str]) -> _M | None:
    if not bag.get(key):
        return None
    try:
        return model.model_validate_json(bag[key])
    except ValidationError:
        unreadable.append(key)
        return None


def _schedule(app_bag: Mapping[str, str]) -> Schedule | None:
    try:
        raw = json.loads(app_bag.get("grants") or "{}")
        grants = {
            unit: PeerGrant(unit, g["op-id"], int(g["token"]), int(g.get("attempt", 0)))
            for unit, g in raw.items()
        }
        return Schedule(grants, int(app_bag.get("next-token") or 1))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _revoked(app_bag: Mapping[str, str]) -> dict[str, Revocation] | None:
    try:
        raw = json.loads(app_bag.get("revoked") or "{}")
        return {unit: Revocation(int(r["token"]), str(r["reason"])) for unit, r in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def write_step(relation: ops.Relation, app: ops.Application, step: LeaderStep) -> None:
    """Leader: publish a pass's result; only changed keys (each write is a hook everywhere)."""
    grants = {
        u: {"op-id": g.op_id, "token": g.token, "attempt": g.attempt}
        for u, g in sorted(step.schedule.grants.items())
    }
    revoked = {u: {"token": r.token, "reason": r.reason} for u, r in sorted(step.revoked.items())}
    _update(
        relation.data[app],
        {
            "backend": step.decision.model_dump_json(),
            "grants": json.dumps(grants),
            "next-token": str(step.schedule.next_token),
            "revoked": json.dumps(revoked) if revoked else "",
        },
    )


def write_pause(relation: ops.Relation, app: ops.Application, pause: Pause | None) -> None:
    """Leader: pause (or resume) grants under the peer backend."""
    _update(relation.data[app], {"pause": pause.model_dump_json() if pause else ""})


def write_revocation(
    relation: ops.Relation, app: ops.Application, unit: str, revocation: Revocation
) -> None:
    """Leader: take the slot from ``unit``'s running operation (the operator's force-release)."""
    bag = relation.data[app]
    current = _revoked(bag) or {}
    current[unit] = revocation
    raw = {u: {"token": r.token, "reason": r.reason} for u, r in sorted(current.items())}
    _update(bag, {"revoked": json.dumps(raw)})


def _update(bag: ops.RelationDataContent, values: Mapping[str, str]) -> None:
    changed = {key: value for key, value in values.items() if bag.get(key, "") != value}
    if changed:
        bag.update(changed)


def write_queue(
    relation: ops.Relation, unit: ops.Unit, queue: UnitQueue | None, epoch: int
) -> None:
    """Publish (or, under etcd, withdraw) this unit's queue for backend ``epoch``."""
    _update(
        relation.data[unit],
        {"queue": "" if queue is None else queue.to_json(), "queue-epoch": str(epoch)},
    )


def flag_etcd_failure(relation: ops.Relation, unit: ops.Unit, failed: bool) -> None:
    """Tell the leader this unit's worker gave up on etcd (or that etcd answers again)."""
    bag = relation.data[unit]
    if failed and not bag.get("etcd-failed"):
        bag["etcd-failed"] = utcnow().isoformat()
    elif not failed and bag.get("etcd-failed"):
        bag["etcd-failed"] = ""
