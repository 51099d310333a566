"""``RollingOps``: what a principal charm adds to get rolling operations from the subordinate.

    self.rolling = RollingOps(self, callbacks={"restart": self._restart})
    ...
    self.rolling.request("restart", {"reason": "config changed"})

The library never waits and never defers. ``request`` writes the request into this unit's
databag and returns its id. When the subordinate grants it, the registered callback runs in
that ``relation-changed`` hook and its return value (``None`` means ``release``) is reported; an
exception counts as ``retry-release``. Without a registered callback, ``on.lock_granted`` is
emitted and the charm calls ``finish`` when it is done (in that hook or a later one).
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import ops
from pydantic import JsonValue, ValidationError

from .protocol import (
    MAX_REQUESTS,
    Grant,
    Request,
    Result,
    ResultName,
    SubordinateBag,
    SubordinateState,
)

logger = logging.getLogger(__name__)

Callback = Callable[..., "ResultName | None"]
"""Called with the request's kwargs as keyword arguments while the unit holds the lock."""


class RollingOpsError(Exception):
    """The library was asked for something it cannot do; the message says why."""


class LockGrantedEvent(ops.EventBase):
    """The subordinate granted one of this unit's operations: run it, then ``finish`` it."""

    def __init__(
        self,
        handle: ops.Handle,
        *,
        op_id: str,
        callback: str,
        kwargs: dict[str, Any],
        attempt: int,
        token: int,
    ) -> None:
        super().__init__(handle)
        self.op_id = op_id
        self.callback = callback
        self.kwargs = kwargs
        self.attempt = attempt
        self.token = token
        """Fencing token: strictly increasing per lock domain; let your resource check it."""

    def snapshot(self) -> dict[str, Any]:
        """What ops stores if the event is deferred."""
        return {
            "op_id": self.op_id,
            "callback": self.callback,
            "kwargs": self.kwargs,
            "attempt": self.attempt,
            "token": self.token,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Rebuild a deferred event."""
        self.op_id = snapshot["op_id"]
        self.callback = snapshot["callback"]
        self.kwargs = snapshot["kwargs"]
        self.attempt = snapshot["attempt"]
        self.token = snapshot["token"]


TOKEN_ARGUMENT = "token"  # noqa: S105 - a parameter name, not a secret
"""The keyword under which a callback that asks for it receives the grant's fencing token."""


class LockLostEvent(ops.EventBase):
    """One of our operations ended because the subordinate lost the lock while it ran.

    Whatever the callback did after that may overlap another unit's operation: its fencing token
    is stale. The operation is not run again by itself; request it again if it must run.
    """

    def __init__(self, handle: ops.Handle, op_id: str, callback: str, reason: str) -> None:
        super().__init__(handle)
        self.op_id = op_id
        self.callback = callback
        self.reason = reason

    def snapshot(self) -> dict[str, Any]:
        """What ops stores if the event is deferred."""
        return {"op_id": self.op_id, "callback": self.callback, "reason": self.reason}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Rebuild a deferred event."""
        self.op_id = snapshot["op_id"]
        self.callback = snapshot["callback"]
        self.reason = snapshot["reason"]


class RollingOpsEvents(ops.ObjectEvents):
    """Events of ``RollingOps``."""

    lock_granted = ops.EventSource(LockGrantedEvent)
    lock_lost = ops.EventSource(LockLostEvent)


class RollingOps(ops.Object):
    """The principal side of the ``rollingops`` container relation."""

    on = RollingOpsEvents()  # type: ignore[reportAssignmentType]
    _stored = ops.StoredState()

    def __init__(
        self,
        charm: ops.CharmBase,
        relation_name: str = "rollingops",
        callbacks: Mapping[str, Callback] | None = None,
    ) -> None:
        super().__init__(charm, f"rollingops-{relation_name}")
        self._relation_name = relation_name
        self._callbacks = dict(callbacks or {})
        self._stored.set_default(delivered=[], requested={})
        self.framework.observe(charm.on[relation_name].relation_joined, self._on_changed)
        self.framework.observe(charm.on[relation_name].relation_changed, self._on_changed)

    # -- what a charm calls ------------------------------------------------------------------

    def request(
        self,
        callback: str,
        kwargs: Mapping[str, JsonValue] | None = None,
        max_retry: int | None = None,
    ) -> str:
        """Ask to run ``callback(**kwargs)`` under the lock; return the operation id.

        Raises ``RollingOpsError`` (and writes nothing) if the subordinate is not related or
        the request is invalid (bad callback name, kwargs not JSON or too large, too many
        requests waiting).
        """
        target = self._callbacks.get(callback)
        if target is not None and TOKEN_ARGUMENT in (kwargs or {}) and _takes_token(target):
            raise RollingOpsError(
                f"kwargs may not use {TOKEN_ARGUMENT!r}: callback {callback!r} receives the "
                "fencing token under that name"
            )
        bag = self._bag()
        requests = self._untaken(_load(bag, "requests"))
        if len(requests) >= MAX_REQUESTS:
            raise RollingOpsError(f"{MAX_REQUESTS} requests are already waiting")
        op_id = f"op-{secrets.token_hex(6)}"
        try:
            request = Request(
                id=op_id,
                callback=callback,
                kwargs=dict(kwargs or {}),
                max_retry=max_retry,
                requested_at=_now(),
            )
        except ValidationError as error:
            raise RollingOpsError(f"invalid request: {error.errors()[0]['msg']}") from error
        bag["requests"] = json.dumps([*requests, request.dump()])
        self._stored.requested = {**self._stored.requested, op_id: callback}  # type: ignore[reportUnknownMemberType]
        return op_id

    def finish(self, op_id: str, result: ResultName = "release") -> None:
        """Report the outcome of the granted operation ``op_id``."""
        granted = self.granted
        if granted is None or granted.id != op_id:
            raise RollingOpsError(f"operation {op_id!r} is not granted now")
        bag = self._bag()
        done = Result(id=op_id, result=result, attempt=granted.attempt, finished_at=_now())
        _store(bag, "requests", self._untaken(_load(bag, "requests")))
        bag["results"] = json.dumps([done.dump()])

    @property
    def state(self) -> SubordinateState | None:
        """What the subordinate says it is doing for this unit, if it has said anything."""
        view = self._view()
        return None if view is None else view.state

    def is_waiting(self, callback: str | None = None) -> bool:
        """Whether an operation (of ``callback``, if given) is requested and not finished."""
        requested: dict[str, str] = dict(self._stored.requested)  # type: ignore[reportUnknownArgumentType]
        return any(callback in (None, name) for name in requested.values())

    # -- relation ----------------------------------------------------------------------------

    def _relation(self) -> ops.Relation | None:
        return self.model.get_relation(self._relation_name)

    def _bag(self) -> ops.RelationDataContent:
        relation = self._relation()
        if relation is None:
            raise RollingOpsError(
                f"no {self._relation_name!r} relation: integrate the rollingops subordinate"
            )
        return relation.data[self.model.unit]

    def _view(self) -> SubordinateBag | None:
        relation = self._relation()
        if relation is None:
            return None
        for unit in relation.units:
            data = relation.data[unit]
            if "protocol" in data:
                return SubordinateBag.from_databag(data)
        return None

    @property
    def granted(self) -> Grant | None:
        """The operation granted now (with its fencing token), for callbacks that need it."""
        view = self._view()
        return None if view is None else view.granted

    def _on_changed(self, _: ops.EventBase) -> None:
        try:
            view = self._view()
        except (ValueError, ValidationError) as error:
            logger.warning("rollingops subordinate data unusable: %s", error)
            return
        if view is None:
            return
        self._forget_finished(view)
        if view.granted is not None:
            self._deliver(view.granted)

    def _untaken(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Requests the subordinate has not taken yet (pruned whenever we write anyway).

        We never write only to prune: every write wakes the subordinate with a hook.
        """
        view = self._view()
        if view is None:
            return requests
        taken = set(view.accepted) | {r.id for r in view.rejected} | {f.id for f in view.finished}
        if view.granted is not None:
            taken.add(view.granted.id)
        return [r for r in requests if r.get("id") not in taken]

    def _forget_finished(self, view: SubordinateBag) -> None:
        """Stop waiting for operations the subordinate reports as over."""
        for rejection in view.rejected:
            logger.warning("rollingops rejected %s: %s", rejection.id, rejection.reason)
        over = {r.id for r in view.rejected} | {f.id for f in view.finished}
        requested: dict[str, str] = dict(self._stored.requested)  # type: ignore[reportUnknownArgumentType]
        for finished in view.finished:
            if finished.outcome == "lock-lost" and finished.id in requested:
                logger.warning(
                    "rollingops lost the lock during %s: %s", finished.id, finished.reason
                )
                self.on.lock_lost.emit(
                    op_id=finished.id, callback=requested[finished.id], reason=finished.reason
                )
        self._stored.requested = {i: c for i, c in requested.items() if i not in over}

    def _deliver(self, grant: Grant) -> None:
        """Run (or announce) a grant once per attempt."""
        key = f"{grant.id}/{grant.attempt}"
        delivered: list[str] = list(self._stored.delivered)  # type: ignore[reportUnknownArgumentType]
        if key in delivered:
            return
        self._stored.delivered = [*delivered[-63:], key]
        callback = self._callbacks.get(grant.callback)
        if callback is None:
            self.on.lock_granted.emit(
                op_id=grant.id,
                callback=grant.callback,
                kwargs=dict(grant.kwargs),
                attempt=grant.attempt,
                token=grant.token,
            )
            return
        arguments = dict(grant.kwargs)
        if _takes_token(callback):
            arguments[TOKEN_ARGUMENT] = grant.token
        try:
            result = callback(**arguments) or "release"
        except Exception:
            logger.exception("rollingops callback %s failed: retry-release", grant.callback)
            result = "retry-release"
        self.finish(grant.id, result)


def _takes_token(callback: Callback) -> bool:
    """Whether the callback names a ``token`` parameter: it then gets the fencing token.

    A callback that protects a resource able to refuse stale holders should pass the token on;
    one that does not name it is called with the request's kwargs alone, as before.
    """
    try:
        parameters = inspect.signature(callback).parameters
    except (TypeError, ValueError):
        return False
    return TOKEN_ARGUMENT in parameters


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _load(bag: Mapping[str, str], key: str) -> list[dict[str, Any]]:
    try:
        items = json.loads(bag.get(key) or "[]")
    except json.JSONDecodeError:
        return []
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _store(bag: ops.RelationDataContent, key: str, items: list[dict[str, Any]]) -> None:
    bag[key] = json.dumps(items) if items else ""
