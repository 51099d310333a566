"""Helpers for a principal charm's own ops.testing tests: the subordinate's side, and readers.

    from ops import testing
    from rollingops_principal.testing import granted_relation, requests_of, results_of

    (request,) = requests_of(state)  # after the hook in which the charm called request()
    mine = state.get_relations("rollingops")[0].local_unit_data
    rel = granted_relation(request.id, "restart", request.kwargs, token=7, local=mine)
    out = ctx.run(ctx.on.relation_changed(rel), dataclasses.replace(state, relations={rel}))
    assert results_of(out)[0].result == "release"

The library runs only what this unit requested (it remembers that in its stored state), so a
test grants what its charm requested in an earlier ``ctx.run``, in the state that run returned.

The bags are built with the protocol's own models (``SubordinateBag.to_databag``), the same
code the subordinate publishes with, so a test sees exactly what a real subordinate writes.
Needs ``ops[testing]``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Literal

from ops import testing
from pydantic import JsonValue

from .protocol import (
    Finished,
    Grant,
    PrincipalBag,
    Rejection,
    Request,
    Result,
    SubordinateBag,
    SubordinateState,
)

RELATION = "rollingops"
_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
Status = Literal["idle", "waiting", "granted", "unavailable"]


def subordinate_relation(
    *,
    granted: Grant | None = None,
    status: Status = "idle",
    backend: Literal["etcd", "peer"] | None = "etcd",
    accepted: Sequence[str] = (),
    rejected: Sequence[Rejection] = (),
    finished: Sequence[Finished] = (),
    sync_socket: str | None = None,
    local: Mapping[str, str] | None = None,
    endpoint: str = RELATION,
    container_scope: bool = False,
) -> testing.RelationBase:
    """The relation as the principal sees it once the subordinate wrote its bag.

    ``local`` is what the principal's own unit bag holds already (``requests``, ``results``).
    ``container_scope``: the principal's metadata declares ``scope: container`` for the
    endpoint (ops.testing then wants a ``SubordinateRelation``); the README's does not.
    """
    bag = SubordinateBag(
        granted=granted,
        state=SubordinateState(backend=backend, status=status),
        accepted=tuple(accepted),
        rejected=tuple(rejected),
        finished=tuple(finished),
        sync_socket=sync_socket,
    )
    if container_scope:
        return testing.SubordinateRelation(
            endpoint,
            remote_app_name="rollingops",
            remote_unit_data=bag.to_databag(),
            local_unit_data=dict(local or {}),
        )
    return testing.Relation(
        endpoint,
        remote_app_name="rollingops",
        remote_units_data={0: bag.to_databag()},
        local_unit_data=dict(local or {}),
    )


def granted_relation(
    op_id: str,
    callback: str,
    kwargs: Mapping[str, JsonValue] | None = None,
    *,
    token: int = 1,
    attempt: int = 1,
    rerun: bool = False,
    backend: Literal["etcd", "peer"] = "etcd",
    local: Mapping[str, str] | None = None,
    endpoint: str = RELATION,
    container_scope: bool = False,
) -> testing.RelationBase:
    """The relation in the hook where the subordinate grants ``op_id`` (its callback runs).

    ``op_id`` must be one the charm requested. ``rerun``: the grant of an attempt granted
    before, whose worker died before it was answered (test what your callback does then).
    """
    grant = Grant(
        id=op_id,
        callback=callback,
        kwargs=dict(kwargs or {}),
        attempt=attempt,
        token=token,
        granted_at=_EPOCH,
        backend=backend,
        rerun=rerun,
    )
    return subordinate_relation(
        granted=grant,
        status="granted",
        backend=backend,
        local=local,
        endpoint=endpoint,
        container_scope=container_scope,
    )


def finished(op_id: str, outcome: str = "done", attempts: int = 1, reason: str = "") -> Finished:
    """One ``finished`` entry of the subordinate's bag (``lock-lost`` fires ``lock_lost``)."""
    return Finished.model_validate(
        {"id": op_id, "outcome": outcome, "attempts": attempts, "reason": reason}
    )


def _principal_bag(state: testing.State, endpoint: str) -> PrincipalBag:
    (relation,) = state.get_relations(endpoint)
    return PrincipalBag.parse(relation.local_unit_data)


def requests_of(state: testing.State, endpoint: str = RELATION) -> list[Request]:
    """The requests the principal's unit wrote in its bag (an output state of ``ctx.run``)."""
    return list(_principal_bag(state, endpoint).requests)


def results_of(state: testing.State, endpoint: str = RELATION) -> list[Result]:
    """The results the principal's unit wrote in its bag (what its callback reported)."""
    return list(_principal_bag(state, endpoint).results)
