"""The peer relation's databags, read into the engine's ``PeerState`` and written back.

Peer application bag (the leader writes):
- ``backend``: ``{"backend": "etcd"|"peer"|"none", "epoch": N, "reason": "...", "since": ...}``;
- ``grants``: ``{unit: {"op-id": ..., "token": N, "attempt": A}}`` under the peer backend;
- ``next-token``: the next fencing token the leader hands out;
- ``pause``: the operator's pause under the peer backend (``{"reason", "by", "since"}``);
- ``revoked``: ``{unit: {"token": N, "reason": ...}}``, operations the operator force-released.

Peer unit bag (each unit writes its own):
- ``queue``: the unit's ``UnitQueue``, published while the backend is not etcd (under etcd,
  writing it would wake every other unit at each transition), as it was before the unit
  claimed its peer grant (``peer_scheduler.published_queue``: a claim decides nothing for the
  leader, and every write is a hook on every other unit), with ``queue-epoch``: the backend
  epoch it was published for (see ``rollingops.leadership`` for why it matters);
- ``etcd-failed``: when this unit's worker gave up on etcd (cleared once etcd answers again).

Whatever is unreadable is left out and logged: a hostile or corrupt value never fails a hook.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import TypeVar

import ops
from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError
from rollingops_principal.untrusted_json import loads

from rollingops.control import Pause
from rollingops.leadership import Decision, LeaderStep, PeerState
from rollingops.models import UnitQueue, utcnow
from rollingops.peer_scheduler import PeerGrant, Revocation, Schedule

logger = logging.getLogger(__name__)
_M = TypeVar("_M", Decision, Pause)
_T = TypeVar("_T")


_DIGITS = re.compile(r"[0-9]{1,18}")
_MAX_VALUE_BYTES = 256 * 1024
_MAX_DEPTH = 8
UNREADABLE_PAUSE = "the pause in the peer relation is unreadable: run resume to clear it"


class _GrantEntry(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    op_id: str = Field(alias="op-id", min_length=1, max_length=256)
    token: StrictInt = Field(ge=1)
    attempt: StrictInt = Field(default=0, ge=0)


class _Revoked(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    token: StrictInt = Field(ge=1)
    op_id: str = Field(default="", alias="op-id", max_length=256)
    reason: str = Field(max_length=1024)


_GRANTS = TypeAdapter(dict[str, _GrantEntry])
_REVOKED = TypeAdapter(dict[str, _Revoked])


def read(relation: ops.Relation, app: ops.Application, me: ops.Unit) -> PeerState:
    """Parse the peer relation as seen by this unit (its own bag and its peers').

    Unreadable values are left out and logged, with two exceptions that fail safe: an
    unreadable decision is reported as such (the leader then fences as if returning from
    peer), and an unreadable pause is a pause (grants stop until an operator resumes).
    """
    app_bag = relation.data[app]
    unreadable: list[str] = []
    queues: dict[str, UnitQueue] = {}
    epochs: dict[str, int] = {}
    failed: set[str] = set()
    for unit in (me, *relation.units):
        bag = relation.data[unit]
        if _DIGITS.fullmatch(bag.get("queue-epoch", "")):
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
    if pause is None and "pause" in unreadable:
        pause = Pause(reason=UNREADABLE_PAUSE, by="unknown", since=utcnow())
    grants = _untrusted(app_bag, "grants", _GRANTS, unreadable) or {}
    revoked = _untrusted(app_bag, "revoked", _REVOKED, unreadable) or {}
    next_token = app_bag.get("next-token", "")
    if next_token and not _DIGITS.fullmatch(next_token):
        unreadable.append("next-token")
    if unreadable:
        logger.warning("peer relation data unreadable, ignored: %s", ", ".join(unreadable))
    schedule = Schedule(
        {u: PeerGrant(u, g.op_id, g.token, g.attempt) for u, g in grants.items()},
        int(next_token) if _DIGITS.fullmatch(next_token) else 1,
    )
    return PeerState(
        decision,
        schedule,
        queues,
        epochs,
        frozenset(failed),
        pause,
        {u: Revocation(r.token, r.reason, r.op_id) for u, r in revoked.items()},
        decision_unreadable="backend" in unreadable,
    )


def _model(bag: Mapping[str, str], key: str, model: type[_M], unreadable: list[str]) -> _M | None:
    if not bag.get(key):
        return None
    try:
        return model.model_validate_json(bag[key])
    except ValidationError:
        unreadable.append(key)
        return None


def _untrusted(
    bag: Mapping[str, str], key: str, adapter: TypeAdapter[_T], unreadable: list[str]
) -> _T | None:
    """A JSON value of the application bag, bounded in size and depth, or None."""
    if not bag.get(key):
        return None
    try:
        raw = loads(bag[key], key, max_bytes=_MAX_VALUE_BYTES, max_depth=_MAX_DEPTH)
        return adapter.validate_python(raw)
    except (ValueError, ValidationError):
        unreadable.append(key)
        return None


def write_step(relation: ops.Relation, app: ops.Application, step: LeaderStep) -> None:
    """Leader: publish a pass's result; only changed keys (each write is a hook everywhere)."""
    grants = {
        u: {"op-id": g.op_id, "token": g.token, "attempt": g.attempt}
        for u, g in sorted(step.schedule.grants.items())
    }
    revoked = {u: _revocation(r) for u, r in sorted(step.revoked.items())}
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
    """Leader: take the slot from ``unit``'s operation (the operator's force-release)."""
    bag = relation.data[app]
    entries = _untrusted(bag, "revoked", _REVOKED, []) or {}
    raw = {u: r.model_dump(by_alias=True) for u, r in entries.items()}
    raw[unit] = _revocation(revocation)
    _update(bag, {"revoked": json.dumps(dict(sorted(raw.items())))})


def _revocation(revocation: Revocation) -> dict[str, object]:
    return {"token": revocation.token, "op-id": revocation.op_id, "reason": revocation.reason}


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
