"""The peer relation as backend: the leader's decision and grants, every unit's queue.

Peer application bag (the leader writes):
- ``backend``: ``{"backend": "etcd"|"peer"|"none", "epoch": N, "reason": "...", "since": ...}``;
- ``grants``: ``{unit: {"op-id": ..., "token": N, "attempt": A}}`` under the peer backend;
- ``next-token``: the next fencing token the leader hands out.

Peer unit bag (each unit writes its own):
- ``queue``: the unit's ``UnitQueue``, published while the backend is not etcd (under etcd,
  writing it would wake every other unit at each transition), with ``queue-epoch``: the
  backend epoch it was published for. After a switch the leader grants nothing new until
  every unit has published for the new epoch, so an operation still running from an etcd
  grant is always counted;
- ``etcd-failed``: when this unit's worker gave up on etcd (cleared once etcd answers again).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import ops
from pydantic import BaseModel, ConfigDict, ValidationError

from rollingops.backend_choice import Backend
from rollingops.models import UnitQueue, utcnow
from rollingops.peer_scheduler import PeerGrant, Schedule

logger = logging.getLogger(__name__)


class Decision(BaseModel):
    """The leader's published choice of backend."""

    model_config = ConfigDict(frozen=True)

    backend: Backend
    epoch: int
    reason: str
    since: dt.datetime


@dataclass(frozen=True)
class PeerView:
    """Everything the peer relation says, parsed; what is unreadable is left out (and logged)."""

    decision: Decision | None
    schedule: Schedule
    queues: dict[str, UnitQueue]
    epochs: dict[str, int]
    """Backend epoch each unit last published its queue for."""
    etcd_failed: dict[str, str]


def read(relation: ops.Relation, app: ops.Application, me: ops.Unit) -> PeerView:
    """Parse the peer relation as seen by this unit (its own bag and its peers')."""
    app_bag = relation.data[app]
    unreadable: list[str] = []
    decision = None
    if app_bag.get("backend"):
        try:
            decision = Decision.model_validate_json(app_bag["backend"])
        except ValidationError:
            unreadable.append("backend")
    queues: dict[str, UnitQueue] = {}
    epochs: dict[str, int] = {}
    failed: dict[str, str] = {}
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
            failed[unit.name] = bag["etcd-failed"]
    schedule = _schedule(app_bag)
    if schedule is None:
        unreadable.append("grants")
        schedule = Schedule({}, 1)
    if unreadable:
        logger.warning("peer relation data unreadable, ignored: %s", ", ".join(unreadable))
    return PeerView(decision, schedule, queues, epochs, failed)


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


def write_decision(relation: ops.Relation, app: ops.Application, decision: Decision) -> None:
    """Leader: publish the backend for every unit."""
    relation.data[app]["backend"] = decision.model_dump_json()


def write_schedule(relation: ops.Relation, app: ops.Application, schedule: Schedule) -> None:
    """Leader: publish the grants (only when they changed, to spare everyone a hook)."""
    grants = {
        u: {"op-id": g.op_id, "token": g.token, "attempt": g.attempt}
        for u, g in sorted(schedule.grants.items())
    }
    bag = relation.data[app]
    new = {"grants": json.dumps(grants), "next-token": str(schedule.next_token)}
    if any(bag.get(key, "") != value for key, value in new.items()):
        bag.update(new)


def write_queue(
    relation: ops.Relation, unit: ops.Unit, queue: UnitQueue | None, epoch: int
) -> None:
    """Publish (or, under etcd, withdraw) this unit's queue for backend ``epoch``."""
    relation.data[unit].update(
        {"queue": "" if queue is None else queue.to_json(), "queue-epoch": str(epoch)}
    )


def flag_etcd_failure(relation: ops.Relation, unit: ops.Unit, failed: bool) -> None:
    """Tell the leader this unit's worker gave up on etcd (or that etcd answers again)."""
    bag = relation.data[unit]
    if failed and not bag.get("etcd-failed"):
        bag["etcd-failed"] = utcnow().isoformat()
    elif not failed and bag.get("etcd-failed"):
        bag["etcd-failed"] = ""
