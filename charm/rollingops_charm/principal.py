"""The container relation with the principal (protocol v1): read its bag, publish ours."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import ops
from pydantic import ValidationError
from rollingops_principal import Finished, Grant, PrincipalBag, SubordinateBag, SubordinateState

from rollingops.backend_choice import Backend

from .intake import RESERVED_CALLBACKS
from .unit_record import UnitRecord


class PrincipalLink:
    """The one principal unit this subordinate unit sits next to."""

    def __init__(self, model: ops.Model, relation_name: str) -> None:
        self._model = model
        self._relation_name = relation_name

    @property
    def relation(self) -> ops.Relation | None:
        """The container relation, if a principal using the library is attached."""
        return self._model.get_relation(self._relation_name)

    def _principal_unit(self) -> ops.Unit | None:
        relation = self.relation
        if relation is None:
            return None
        return next(iter(relation.units), None)

    def read(self) -> PrincipalBag:
        """What the principal asks; empty without a principal."""
        relation, unit = self.relation, self._principal_unit()
        if relation is None or unit is None:
            return PrincipalBag()
        return PrincipalBag.parse(relation.data[unit])

    def publish(self, bag: SubordinateBag) -> None:
        """Write our side of the protocol when the principal has something to act on.

        Every write wakes the principal with a ``relation-changed`` hook, so informational
        fields (``state``, ``accepted``, ``done`` entries) are only refreshed together with
        something actionable: the first publish, a new grant, a new rejection, a request
        dropped or merged. That keeps an operation at a constant handful of hooks.
        """
        relation = self.relation
        if relation is None:
            return
        ours = relation.data[self._model.unit]
        if _actionable(ours) != _actionable_of(bag):
            ours.update(bag.to_databag())


def _actionable_of(bag: SubordinateBag) -> tuple[object, ...]:
    granted = bag.granted
    return (
        bag.protocol,
        bag.sync_socket,
        None if granted is None else (granted.id, granted.attempt, granted.token),
        frozenset((r.id, r.reason) for r in bag.rejected),
        frozenset(f.id for f in bag.finished if f.outcome != "done"),
    )


def _actionable(data: Mapping[str, str]) -> tuple[object, ...] | None:
    try:
        return _actionable_of(SubordinateBag.from_databag(data))
    except (ValueError, ValidationError):
        return None


def subordinate_bag(
    record: UnitRecord, backend: Backend | None, sync_socket: Path | None = None
) -> SubordinateBag:
    """Our protocol bag, derived from the unit's record and the backend in use.

    ``backend`` is None while etcd is the chosen backend but not usable yet; ``sync_socket``
    is where the worker serves synchronous holds, while etcd grants.
    """
    queue = record.queue
    grant = queue.current
    granted = None
    if grant is not None:
        op = grant.operation
        if op.callback not in RESERVED_CALLBACKS:
            granted = Grant(
                id=op.id,
                callback=op.callback,
                kwargs=op.kwargs,
                attempt=op.attempt,
                token=grant.token,
                granted_at=grant.granted_at,
                backend="peer" if backend is Backend.PEER else "etcd",
                rerun=grant.rerun,
            )
    # The operator's run-exclusive operations share the queue but are not the principal's:
    # it is told nothing of them, so it has no id to forge a result for.
    operations = [*queue.pending, *([grant.operation] if grant else [])]
    return SubordinateBag(
        granted=granted,
        state=_state(record, backend),
        accepted=tuple(
            sorted(op.id for op in operations if op.callback not in RESERVED_CALLBACKS)
        ),
        rejected=record.rejected,
        sync_socket=str(sync_socket) if sync_socket is not None else None,
        finished=record.merged
        + tuple(
            Finished(
                id=entry.id,
                outcome=entry.outcome.value,
                attempts=entry.attempts,
                reason=entry.reason,
            )
            for entry in queue.history
            if entry.callback not in RESERVED_CALLBACKS
        ),
    )


def _state(record: UnitRecord, backend: Backend | None) -> SubordinateState:
    queue = record.queue
    length = len(queue.pending) + (queue.current is not None)
    if backend is None or backend is Backend.NONE:
        message = (
            "etcd lost and fallback=none: no grants until it is back"
            if backend is Backend.NONE
            else "no usable etcd: requests wait in your databag"
        )
        return SubordinateState(
            backend=None, status="unavailable", queue_length=length, message=message
        )
    if queue.current is not None:
        status = "granted"
    elif queue.pending:
        status = "waiting"
    else:
        status = "idle"
    return SubordinateState(backend=backend.value, status=status, queue_length=length)
