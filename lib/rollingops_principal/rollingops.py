"""``RollingOps``: what a principal charm adds to get rolling operations from the subordinate.

    self.rolling = RollingOps(self, callbacks={"restart": self._restart})
    ...
    self.rolling.request("restart", {"reason": "config changed"})

The library never waits and never defers. ``request`` writes the request into this unit's
databag (or keeps it until the relation exists) and returns its id. When the subordinate grants
it, the registered callback runs in that ``relation-changed`` hook and its return value (a
``LockResult``; ``None`` means ``release``) is reported; an exception counts as
``retry-release``, a value that is no result is logged and reported as ``release``. A callback
named in ``events`` instead emits ``on.lock_granted``, and the charm calls ``finish`` when it is
done (in that hook or a later one).

Only an operation this unit requested and has not finished is run. A grant of anything else
(an id it never requested or already answered ``release``, or another callback than the one
requested) is logged as a warning and answered ``release``, the one answer every subordinate
ends an operation with, so the lock moves on; nothing of this charm runs for it.

A grant is delivered at least once per attempt, not exactly once: if the subordinate's worker
dies while the callback runs, the restarted worker grants the same attempt again, under a new
token and marked ``rerun``. This unit runs it again unless it already answered that attempt.
A callback that cannot safely run twice names a ``rerun`` parameter (or reads
``LockGrantedEvent.rerun``) and checks what the first run left behind; the simplest callback
is one that is idempotent.

The subordinate rewrites its databag only when the principal has something to act on (a grant,
a rejection, an operation that ended other than ``done``): that keeps an operation at 5 hooks,
but its ``state`` can be stale (``idle`` while a request it took waits, ``granted`` after this
unit answered ``release``, the worker having ended the operation with no hook). So ``state`` and
``is_waiting`` combine the subordinate's bag with what this unit knows itself (what it asked for,
what it answered), and are right after every hook without the subordinate writing more often.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import inspect
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ops
from pydantic import JsonValue, ValidationError

from .errors import (
    RollingOpsError,
    SyncLockNoRelationError,
    SyncLockUnavailableError,
)
from .protocol import (
    MAX_REQUESTS,
    Grant,
    Request,
    Result,
    ResultName,
    SubordinateBag,
    SubordinateState,
)
from .sync_wire import SyncGrant, hold

logger = logging.getLogger(__name__)

MAX_ANSWERED = 64
"""Answers remembered (op id, attempt, result) until the subordinate reports the operation over.

Only operations granted and not yet reported over are remembered, a handful at most; the bound
guards the stored state against a subordinate that never reports."""
TERMINAL: frozenset[str] = frozenset({"release"})
"""Answers after which the operation is no longer waiting (the callback ran and is done)."""
LETS_GO: frozenset[str] = frozenset({"release", "retry-release"})
"""Answers that give the lock back: the grant they answer is not held any more."""
LOST_OUTCOMES = {
    "lock-lost": "the subordinate lost the lock while the operation ran",
    "revoked": "the operator force-released the lock while the operation ran",
}
"""Finished outcomes announced with ``lock_lost``, and the reason given when none is reported."""


class LockResult(str, enum.Enum):
    """What a callback returns (or ``finish`` reports) when its operation is over for now."""

    RELEASE = "release"
    """Done: give the lock back."""
    RETRY_RELEASE = "retry-release"
    """Run it again later: give the lock back, the operation goes back in the queue."""
    RETRY_HOLD = "retry-hold"
    """Run it again now: keep the lock, the callback is called again (next attempt)."""


_ALLOWED = "allowed are None, " + ", ".join(repr(result.value) for result in LockResult)

Callback = Callable[..., "LockResult | ResultName | None"]
"""Called with the request's kwargs as keyword arguments while the unit holds the lock."""


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
        rerun: bool = False,
    ) -> None:
        super().__init__(handle)
        self.op_id = op_id
        self.callback = callback
        self.kwargs = kwargs
        self.attempt = attempt
        self.token = token
        """Fencing token: strictly increasing per lock domain; let your resource check it."""
        self.rerun = rerun
        """This attempt was granted before and the subordinate's worker died before it was
        answered: the work may have started, even finished. Check what it left, or be
        idempotent."""

    def snapshot(self) -> dict[str, Any]:
        """What ops stores if the event is deferred."""
        return {
            "op_id": self.op_id,
            "callback": self.callback,
            "kwargs": self.kwargs,
            "attempt": self.attempt,
            "token": self.token,
            "rerun": self.rerun,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Rebuild a deferred event."""
        self.op_id = snapshot["op_id"]
        self.callback = snapshot["callback"]
        self.kwargs = snapshot["kwargs"]
        self.attempt = snapshot["attempt"]
        self.token = snapshot["token"]
        self.rerun = snapshot.get("rerun", False)  # deferred by a library without it


TOKEN_ARGUMENT = "token"  # noqa: S105 - a parameter name, not a secret
"""The keyword under which a callback that asks for it receives the grant's fencing token."""
RERUN_ARGUMENT = "rerun"
"""The keyword under which a callback that asks for it learns whether its grant is a re-run."""
GRANT_ARGUMENTS = {TOKEN_ARGUMENT: "the fencing token", RERUN_ARGUMENT: "the re-run flag"}
"""What a callback receives from its grant when it names the parameter, and what it is."""


class LockLostEvent(ops.EventBase):
    """One of our operations ended because the lock was lost while it ran.

    Either the subordinate lost it (finished outcome ``lock-lost``: lease expired or revoked
    under it) or the operator force-released it (outcome ``revoked``); ``reason`` says which.
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
        events: Iterable[str] = (),
    ) -> None:
        """Serve ``callbacks`` by name; ``events`` names the callbacks served by ``lock_granted``.

        Once either names anything, ``request`` refuses any other name: a misspelled callback
        would otherwise hold the lock with nothing to answer it.
        """
        super().__init__(charm, f"rollingops-{relation_name}")
        self._relation_name = relation_name
        self._callbacks = dict(callbacks or {})
        names = (events,) if isinstance(events, str) else tuple(events)  # one name, not letters
        self._known = frozenset(self._callbacks) | frozenset(names)
        self._stored.set_default(delivered=[], requested={}, answered=[], unsent=[])
        on = charm.on[relation_name]
        for event in (on.relation_created, on.relation_joined, on.relation_changed):
            self.framework.observe(event, self._on_changed)
        self.framework.observe(on.relation_broken, self._on_broken)

    # -- what a charm calls ------------------------------------------------------------------

    def request(
        self,
        callback: str,
        kwargs: Mapping[str, JsonValue] | None = None,
        max_retry: int | None = None,
    ) -> str:
        """Ask to run ``callback(**kwargs)`` under the lock; return the operation id.

        Without the relation yet (``config-changed`` runs before ``juju integrate``), the
        request is kept in this unit's stored state and sent when the relation appears;
        ``state`` says so meanwhile. Raises ``RollingOpsError`` (and keeps nothing) if the
        request is invalid: a callback name this charm did not register, kwargs not JSON or too
        large, too many requests waiting.
        """
        self._check_callback(callback, kwargs)
        relation = self._relation()
        waiting = (
            self._unsent()
            if relation is None
            else self._untaken(_load(relation.data[self.model.unit], "requests"))
        )
        if len(waiting) >= MAX_REQUESTS:
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
        if relation is None:
            self._stored.unsent = [*self._stored.unsent, json.dumps(request.dump())]  # type: ignore[reportUnknownMemberType]
            logger.info("rollingops not related yet: %s kept until it is", op_id)
        else:
            relation.data[self.model.unit]["requests"] = json.dumps([*waiting, request.dump()])
        self._stored.requested = {**self._stored.requested, op_id: callback}  # type: ignore[reportUnknownMemberType]
        return op_id

    def finish(self, op_id: str, result: LockResult | ResultName = LockResult.RELEASE) -> None:
        """Report the outcome of the granted operation ``op_id``.

        ``result`` is a ``LockResult`` (or its value); anything else raises ``RollingOpsError``.

        The answer is also remembered here (op id, attempt, result) until the subordinate
        reports the operation over: ``state`` and ``is_waiting`` use it, since the subordinate
        does not rewrite its bag when it applies a result.
        """
        try:
            result = LockResult(result).value
        except ValueError as error:
            raise RollingOpsError(f"{result!r} is not a result: {_ALLOWED}") from error
        granted = self.granted
        if granted is None or granted.id != op_id:
            raise RollingOpsError(f"operation {op_id!r} is not granted now")
        bag = self._bag()
        done = Result(id=op_id, result=result, attempt=granted.attempt, finished_at=_now())
        _store(bag, "requests", self._untaken(_load(bag, "requests")))
        bag["results"] = json.dumps([done.dump()])
        answer = [op_id, granted.attempt, result]
        self._stored.answered = [*self._answered()[-(MAX_ANSWERED - 1) :], answer]

    @contextlib.contextmanager
    def sync_lock(self, timeout: float, holder: str | None = None) -> Iterator[SyncGrant]:
        """Hold the lock for the body of a ``with`` block, in this very hook.

            with self.rolling.sync_lock(timeout=120) as grant:
                leave_the_cluster(fencing_token=grant.token)

        For teardown paths (``stop``, ``storage-detaching``, a scale-down's
        ``relation-departed``) that cannot wait for an asynchronous grant. The subordinate's
        worker grants it ahead of every waiting asynchronous operation, never displacing a
        holder, and releases it at the end of the block or when this process dies.

        Raises (all ``SyncLockError``, a ``RollingOpsError``): ``SyncLockNoRelationError``
        without the relation; ``SyncLockUnavailableError`` at once when the subordinate cannot
        grant synchronously (the peer backend, whose grants need a hook that cannot run while
        this one does; etcd not ready; no worker); ``SyncLockTimeoutError`` when not granted
        within ``timeout`` seconds (nothing is left behind); ``SyncLockLostError`` at the end of
        the block if the hold ended before it (lease lost, force-released, worker stopped).
        """
        path = self._sync_socket()
        label = holder or f"{self.model.unit.name} {_hook_name()}"
        with hold(path, timeout, label[:64], "hook") as grant:
            yield grant

    def _sync_socket(self) -> Path:
        """Where the subordinate serves synchronous holds; raises when it cannot now."""
        if self._relation() is None:
            raise SyncLockNoRelationError(
                f"no {self._relation_name!r} relation: integrate the rollingops subordinate"
            )
        try:
            view = self._view()
        except (ValueError, ValidationError) as error:
            raise SyncLockUnavailableError(f"unreadable subordinate bag: {error}") from error
        if view is None:
            raise SyncLockUnavailableError("the subordinate has not answered yet")
        if view.state.backend == "peer":
            raise SyncLockUnavailableError(
                "the lock domain runs on the peer backend (etcd is lost): a peer grant needs a "
                "hook, and none can run on this machine while this one holds the machine lock"
            )
        if view.sync_socket is None:
            said = view.state.message or f"backend {view.state.backend or 'none'}"
            raise SyncLockUnavailableError(
                "no synchronous grants now: the subordinate serves them only while etcd grants "
                f"the lock (it last said: {said})"
            )
        return Path(view.sync_socket)

    @property
    def state(self) -> SubordinateState | None:
        """What the subordinate does for this unit, corrected with what this unit knows.

        ``None`` until the subordinate has written its bag, except that requests kept before
        the relation existed show as ``waiting`` ("not related to rollingops yet"). Never
        raises: a bag that cannot be read shows as ``unavailable`` with the reason. The
        subordinate rewrites its bag only when this unit has something to act on (that keeps
        an operation at 5 hooks), so its ``status`` can be stale; here it is, after every hook:

        - ``unavailable`` when the subordinate says so (no usable backend);
        - ``granted`` while the grant in its bag (id, attempt) has not been answered by this unit
          with ``release`` or ``retry-release`` (``retry-hold`` keeps the lock);
        - otherwise ``waiting`` when ``is_waiting()``, whether the subordinate has taken the
          request yet or not, and ``idle`` when not.

        ``position`` is the subordinate's only while both it and this view say ``waiting``
        (``None`` otherwise): it is as of the subordinate's last write. The other fields are the
        subordinate's, as written.
        """
        try:
            view = self._view()
        except (ValueError, ValidationError) as error:
            return SubordinateState(
                backend=None,
                status="unavailable",
                message=f"the subordinate's data is unusable: {str(error)[:200]}",
            )
        if view is None:
            return self._kept_state()
        reported = view.state
        if reported.status == "unavailable":
            status = "unavailable"
        elif view.granted is not None and not self._answered_with(view.granted, LETS_GO):
            status = "granted"
        elif self._waiting(view, None):
            status = "waiting"
        else:
            status = "idle"
        position = reported.position if status == reported.status == "waiting" else None
        return reported.model_copy(update={"status": status, "position": position})

    def is_waiting(self, callback: str | None = None) -> bool:
        """Whether an operation (of ``callback``, if given) is requested and not over.

        An operation this unit requested waits until the subordinate reports it over (finished
        or rejected) or this unit answers it with ``release`` (its callback ran, or ``finish``
        was called): the subordinate does not rewrite its bag when it applies that answer, so
        waiting for it to say ``finished`` would keep this true long after the operation ended.
        ``retry-release`` and ``retry-hold`` answers keep it waiting. Never raises: a bag that
        cannot be read counts as saying nothing.
        """
        try:
            view = self._view()
        except (ValueError, ValidationError):
            view = None
        return self._waiting(view, callback)

    def _check_callback(self, callback: str, kwargs: Mapping[str, JsonValue] | None) -> None:
        if self._known and callback not in self._known:
            raise RollingOpsError(
                f"unknown callback {callback!r}: this charm registered {sorted(self._known)} "
                "(RollingOps callbacks= and events=)"
            )
        target = self._callbacks.get(callback)
        for name, what in GRANT_ARGUMENTS.items():
            if target is not None and name in (kwargs or {}) and _takes(target, name):
                raise RollingOpsError(
                    f"kwargs may not use {name!r}: callback {callback!r} receives {what} "
                    "under that name"
                )

    def _unsent(self) -> list[dict[str, Any]]:
        """Requests made before the relation existed, oldest first (stored as JSON text)."""
        return [json.loads(raw) for raw in self._stored.unsent]  # type: ignore[reportUnknownArgumentType,reportUnknownVariableType]

    def _kept_state(self) -> SubordinateState | None:
        """What ``state`` says before the subordinate wrote anything: kept requests, if any."""
        kept = len(self._unsent())
        if self._relation() is not None or not kept:
            return None
        return SubordinateState(
            backend=None,
            status="waiting",
            queue_length=kept,
            message=f"not related to rollingops yet: {kept} request(s) kept until it is",
        )

    def _send_unsent(self, relation: ops.Relation) -> None:
        """Put the requests kept before the relation existed into our bag, as many as fit."""
        unsent = self._unsent()
        if not unsent:
            return
        bag = relation.data[self.model.unit]
        waiting = self._untaken(_load(bag, "requests"))
        room = max(MAX_REQUESTS - len(waiting), 0)
        bag["requests"] = json.dumps([*waiting, *unsent[:room]])
        self._stored.unsent = [json.dumps(r) for r in unsent[room:]]
        logger.info("rollingops related: %d kept request(s) sent", min(room, len(unsent)))

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
        """The operation granted now (with its fencing token), for callbacks that need it.

        ``None`` too when the subordinate's bag cannot be read (logged): nothing is granted
        that this unit can trust.
        """
        try:
            view = self._view()
        except (ValueError, ValidationError) as error:
            logger.warning("rollingops subordinate data unusable: %s", error)
            return None
        return None if view is None else view.granted

    def _answered(self) -> list[list[Any]]:
        """Answers given and not yet pruned: ``[op id, attempt, result]`` each."""
        return [list(a) for a in self._stored.answered]  # type: ignore[reportUnknownArgumentType,reportUnknownVariableType]

    def _answered_with(self, grant: Grant, results: frozenset[str]) -> bool:
        """Whether this unit answered this grant (id and attempt) with one of ``results``."""
        return any(
            op_id == grant.id and attempt == grant.attempt and result in results
            for op_id, attempt, result in self._answered()
        )

    def _waiting(self, view: SubordinateBag | None, callback: str | None) -> bool:
        requested: dict[str, str] = dict(self._stored.requested)  # type: ignore[reportUnknownArgumentType]
        over = set() if view is None else _over(view)
        over |= {op_id for op_id, _, result in self._answered() if result in TERMINAL}
        return any(
            callback in (None, name) and op_id not in over for op_id, name in requested.items()
        )

    def _on_broken(self, _: ops.RelationBrokenEvent) -> None:
        """The relation is gone, and with it every request it carried: forget them.

        A new relation starts from an empty bag, so they will never be granted or reported
        over; remembering them would keep ``is_waiting`` true for good. Requests kept because no
        relation existed yet stay kept. The charm requests again what must still run.
        """
        kept = {str(request.get("id")) for request in self._unsent()}
        requested: dict[str, str] = dict(self._stored.requested)  # type: ignore[reportUnknownArgumentType]
        dropped = sorted(op_id for op_id in requested if op_id not in kept)
        if dropped:
            logger.warning(
                "rollingops relation removed: %d request(s) dropped with it (%s); "
                "request again what must still run",
                len(dropped),
                ", ".join(dropped),
            )
        self._stored.requested = {i: c for i, c in requested.items() if i in kept}
        self._stored.answered = []

    def _on_changed(self, event: ops.RelationEvent) -> None:
        self._send_unsent(event.relation)
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
        try:
            view = self._view()
        except (ValueError, ValidationError) as error:  # nothing to prune by: keep them all
            logger.warning("rollingops subordinate data unusable: %s", error)
            return requests
        if view is None:
            return requests
        taken = set(view.accepted) | {r.id for r in view.rejected} | {f.id for f in view.finished}
        if view.granted is not None:
            taken.add(view.granted.id)
        return [r for r in requests if r.get("id") not in taken]

    def _forget_finished(self, view: SubordinateBag) -> None:
        """Stop remembering operations the subordinate reports as over.

        Over: finished or rejected in its bag; or answered ``release`` here and neither granted
        nor accepted in its bag any more (we saw it granted, so the bag was rewritten since the
        operation left the queue, and its ``done`` may already be out of the ``finished`` list).
        """
        for rejection in view.rejected:
            logger.warning("rollingops rejected %s: %s", rejection.id, rejection.reason)
        requested: dict[str, str] = dict(self._stored.requested)  # type: ignore[reportUnknownArgumentType]
        for finished in view.finished:
            if finished.outcome in LOST_OUTCOMES and finished.id in requested:
                reason = finished.reason or LOST_OUTCOMES[finished.outcome]
                logger.warning(
                    "rollingops lost the lock during %s (%s): %s",
                    finished.id,
                    finished.outcome,
                    reason,
                )
                self.on.lock_lost.emit(
                    op_id=finished.id, callback=requested[finished.id], reason=reason
                )
        held = set(view.accepted) | ({view.granted.id} if view.granted else set())
        released = {i for i, _, result in self._answered() if result in TERMINAL} - held
        over = _over(view) | released
        self._stored.requested = {i: c for i, c in requested.items() if i not in over}
        answered = self._answered()
        if any(op_id in over for op_id, _, _ in answered):
            self._stored.answered = [a for a in answered if a[0] not in over]

    def _deliver(self, grant: Grant) -> None:
        """Run (or announce) a grant of ours once per attempt; refuse any other.

        Once per attempt as this unit knows it: a re-run (``grant.rerun``) of an attempt that a
        hook here delivered to its end is not delivered again (its callback answered, or its
        ``lock_granted`` was handled). A hook that died midway stored nothing, so the re-run is
        delivered, marked as such.
        """
        key = f"{grant.id}/{grant.attempt}"
        delivered: list[str] = list(self._stored.delivered)  # type: ignore[reportUnknownArgumentType]
        if key in delivered:
            return
        self._stored.delivered = [*delivered[-63:], key]
        refusal = self._refusal(grant)
        if refusal:
            logger.warning(
                "rollingops granted %s (callback %r, attempt %d, token %d), but %s: not run, "
                "answered 'release' so that the lock moves on",
                grant.id,
                grant.callback,
                grant.attempt,
                grant.token,
                refusal,
            )
            self.finish(grant.id, LockResult.RELEASE)
            return
        callback = self._callbacks.get(grant.callback)
        if callback is None:
            self.on.lock_granted.emit(
                op_id=grant.id,
                callback=grant.callback,
                kwargs=dict(grant.kwargs),
                attempt=grant.attempt,
                token=grant.token,
                rerun=grant.rerun,
            )
            return
        offered = {TOKEN_ARGUMENT: grant.token, RERUN_ARGUMENT: grant.rerun}
        arguments = dict(grant.kwargs)
        arguments.update(
            {name: value for name, value in offered.items() if _takes(callback, name)}
        )
        try:
            returned = callback(**arguments)
        except Exception:
            logger.exception("rollingops callback %s failed: retry-release", grant.callback)
            returned = LockResult.RETRY_RELEASE
        self.finish(grant.id, _result_of(grant.callback, returned))

    def _refusal(self, grant: Grant) -> str:
        """Why ``grant`` is not ours to run, or ``""`` when it is.

        Ours: requested by this unit for that callback (what it requested is remembered until
        the operation is over) and not answered ``release`` already, whatever the attempt.
        """
        requested: dict[str, str] = dict(self._stored.requested)  # type: ignore[reportUnknownArgumentType]
        if grant.id not in requested:
            return "this unit did not request it, or it is over"
        if requested[grant.id] != grant.callback:
            return f"this unit requested it for callback {requested[grant.id]!r}"
        if any(op_id == grant.id and r in TERMINAL for op_id, _, r in self._answered()):
            return "this unit already answered it 'release'"
        return ""


def _result_of(callback: str, returned: object) -> LockResult:
    """A callback's return value as a result; a value that is none is logged, not raised.

    Raising would error the hook, and Juju's retry would run the callback again: it ran to its
    end, so its operation is reported ``release`` (done), with the error in the log.
    """
    if returned is None:
        return LockResult.RELEASE
    try:
        return LockResult(returned)
    except ValueError:
        logger.error(  # noqa: TRY400 - no exception to show: a value the author returned
            "rollingops callback %r returned %r, not a result (%s): reported as 'release'",
            callback,
            returned,
            _ALLOWED,
        )
        return LockResult.RELEASE


def _over(view: SubordinateBag) -> set[str]:
    """Ids the subordinate reports as over: finished (any outcome) or rejected."""
    return {r.id for r in view.rejected} | {f.id for f in view.finished}


def _takes(callback: Callback, name: str) -> bool:
    """Whether the callback names the parameter ``name`` (``GRANT_ARGUMENTS``): it gets it.

    A callback that protects a resource able to refuse stale holders should take ``token`` and
    pass it on; one that cannot run twice safely takes ``rerun``. One that names neither is
    called with the request's kwargs alone, as before.
    """
    try:
        parameters = inspect.signature(callback).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


def _hook_name() -> str:
    """The running hook (or action), for the hold's label in logs and ``lock-status``."""
    dispatch = os.environ.get("JUJU_DISPATCH_PATH", "")
    name = dispatch.rpartition("/")[2] or "hook"
    return "".join(c for c in name if " " <= c <= "~")


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
