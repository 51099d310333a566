"""The lock backend behind every hook, action and status: etcd, the peer relation, or none.

The leader decides the backend for the whole application (``rollingops.leadership``); each unit
turns that decision and its own etcd settings into one ``LockBackend`` here (``select``). Hooks
sync through it, actions act through it, the status and the principal's bag say what it says.
Nothing else in the charm knows where the queue lives, so no path can write to etcd while the
peer backend grants (that lost an operator's ``run-exclusive`` once).

Where a unit's queue lives (``queue_home``):
- etcd chosen and usable: in etcd (the unit's record is a mirror, refreshed every hook);
- peer or none chosen: in the unit's record, published to the peer relation; returning to etcd
  copies it into etcd (etcd's copy is stale since the switch);
- etcd chosen but not usable yet (no credentials, no answer from charmed-etcd): nowhere new.
  Requests wait in the principal's bag and operator changes are refused, so nothing is taken
  into a record that etcd's queue would later overwrite.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import ops
from rollingops_principal import PrincipalBag
from typing_extensions import override

from rollingops.backend_choice import Backend
from rollingops.control import DomainControl, Pause
from rollingops.etcd_client import EtcdClient, EtcdSettings
from rollingops.leadership import PeerState
from rollingops.models import Operation, UnitQueue, utcnow
from rollingops.peer_scheduler import Revocation, published_queue
from rollingops.semaphore import Contender
from rollingops.store import OperationStore, QueueSnapshot, QueueStore

from . import exclusive, peer_relation
from .intake import Applied, absorb, apply, local_sync, take
from .unit_record import UnitRecord


class BackendError(Exception):
    """The backend cannot do what was asked now; the message says why, for the operator."""


@dataclass(frozen=True)
class Holder:
    """A unit holding the lock, and what it runs under it (if its queue says)."""

    unit: str
    token: int
    op: str | None = None
    callback: str | None = None
    since: dt.datetime | None = None
    sync: bool = False
    """A synchronous hold (a hook or a command on the unit's machine), not an operation."""


@dataclass(frozen=True)
class Waiter:
    """A unit waiting for the lock (``sync``: for a synchronous hold)."""

    unit: str
    op: str | None = None
    sync: bool = False


@dataclass(frozen=True)
class DomainView:
    """The lock domain as the backend that grants it sees it."""

    granting: Backend | None
    """The backend actually granting: etcd, peer, none (fallback=none), or None: etcd is
    chosen but not usable yet."""
    holders: tuple[Holder, ...] = ()
    queue: tuple[Waiter, ...] = ()
    """Every waiting unit, in the order the backend will grant them."""
    pause: Pause | None = None
    error: str = ""
    """Why the backend could not be read (etcd unreachable), if it could not."""


class LockBackend(Protocol):
    """What hooks, actions and the status need from wherever the lock lives."""

    granting: Backend | None
    queue_is_local: bool
    """The unit's record is its queue (published to the peer relation) rather than a mirror."""

    def sync(self, record: UnitRecord, bag: PrincipalBag, on_grant: bool) -> UnitRecord:
        """Take the principal's requests and result; return the record after them."""
        ...

    def enqueue(self, record: UnitRecord, op: Operation) -> UnitRecord:
        """Queue an operator's operation (``ValueError`` if the queue refuses it)."""
        ...

    def cancel(self, record: UnitRecord, op_id: str, reason: str) -> UnitRecord:
        """Drop one of this unit's operations, waiting or running."""
        ...

    def live_queue(self, record: UnitRecord) -> UnitQueue:
        """The unit's queue as the backend has it now (history included), not a mirror."""
        ...

    def published(self, record: UnitRecord) -> UnitQueue | None:
        """What the unit publishes of its queue to the peer relation (``None``: nothing)."""
        ...

    def domain(self) -> DomainView:
        """Holders, the whole queue in grant order, and the pause."""
        ...

    def pause(self, reason: str, by: str) -> Pause:
        """No new grants in the domain until ``resume``."""
        ...

    def resume(self) -> bool:
        """Grants go on; whether it was paused."""
        ...

    def force_release(self, unit: str, reason: str) -> list[int]:
        """Take the lock from ``unit``; its running operation ends ``revoked``."""
        ...


def queue_home(decided: Backend, etcd_usable: bool) -> Backend | None:
    """Where this unit's queue lives under the leader's decision (see the module docstring)."""
    if decided is not Backend.ETCD:
        return decided
    return Backend.ETCD if etcd_usable else None


def enter_store(record: UnitRecord, store: QueueStore) -> QueueSnapshot:
    """The authoritative queue, once the unit has brought its own into etcd if it must.

    Entering from peer or none (or finding etcd's copy missing while the record has work), the
    record's queue replaces etcd's, stale since the switch. Every first write after a switch
    goes through here, a hook's sync or an operator's action alike: an action that wrote to
    etcd's stale copy first would drop what the record queued under peer.
    """
    snapshot = store.load()
    back_from_fallback = record.last_backend in (Backend.PEER, Backend.NONE)
    if back_from_fallback or (snapshot.mod_revision == 0 and record.queue.has_work):
        snapshot = store.update(lambda _: record.queue, snapshot)
    return snapshot


def sync_with_store(
    record: UnitRecord, bag: PrincipalBag, store: QueueStore, on_grant: bool
) -> UnitRecord:
    """Apply the principal's requests and result to the authoritative queue in ``store``.

    Requests become *seen* only once the transaction that queues them succeeded: if etcd is
    unreachable they stay in the principal's bag and are taken on a later hook. Entering from
    peer or none, the record's queue replaces etcd's (stale since the switch).
    """
    snapshot = enter_store(record, store)
    intake = take(bag, snapshot.queue, set(record.seen))
    applied = Applied([], [])

    def change(queue: UnitQueue) -> UnitQueue:
        nonlocal applied
        queue, applied = apply(queue, intake)
        return queue

    snapshot = store.update(change, snapshot)
    if on_grant:
        snapshot, run = exclusive.run_if_granted(store, snapshot)
        if run is not None:
            record = record.model_copy(update={"exclusive_runs": (*record.exclusive_runs, run)})
    return absorb(record, snapshot.queue, intake, applied).model_copy(
        update={"etcd_failure": None, "last_backend": Backend.ETCD}
    )


def sync_locally(
    record: UnitRecord, bag: PrincipalBag, granting: Backend, state: PeerState, unit: str
) -> UnitRecord:
    """Peer or none: the record is the queue; claim, finish and run operator commands here."""
    grant = state.schedule.grants.get(unit) if granting is Backend.PEER else None
    record = local_sync(record, bag, granting, grant, revocation=state.revoked.get(unit))
    queue, run = exclusive.run_here(record.queue)
    if run is None:
        return record
    return record.model_copy(
        update={"queue": queue, "exclusive_runs": (*record.exclusive_runs, run)}
    )


class EtcdSession:
    """One connection to etcd: the unit queues and the domain's control, for one call."""

    def __init__(self, client: EtcdClient, unit: str, capacity: int) -> None:
        self._client = client
        self._unit = unit
        self._capacity = capacity

    def store(self, unit: str | None = None) -> QueueStore:
        """The queue of ``unit`` (default: this unit)."""
        return OperationStore(self._client, self._client.prefix, unit or self._unit)

    def control(self) -> DomainControl:
        """Pause, holders, token floor and force-release of the domain."""
        return DomainControl(self._client, self._client.prefix, self._capacity)


class EtcdLock(LockBackend):
    """etcd grants: the unit's queue, the domain's semaphore and pause live in etcd."""

    granting: Backend | None = Backend.ETCD
    queue_is_local = False

    def __init__(self, settings: EtcdSettings, unit: str, capacity: int) -> None:
        self._settings = settings
        self._unit = unit
        self._capacity = capacity

    @contextlib.contextmanager
    def session(self) -> Iterator[EtcdSession]:
        """A connection for one hook step or action (bounded by the settings' timeouts)."""
        with EtcdClient(self._settings) as client:
            yield EtcdSession(client, self._unit, self._capacity)

    @override
    def sync(self, record: UnitRecord, bag: PrincipalBag, on_grant: bool) -> UnitRecord:
        with self.session() as etcd:
            return sync_with_store(record, bag, etcd.store(), on_grant)

    def _change(self, record: UnitRecord, change: Callable[[UnitQueue], UnitQueue]) -> UnitRecord:
        with self.session() as etcd:
            store = etcd.store()
            snapshot = store.update(change, enter_store(record, store))
        return record.model_copy(update={"queue": snapshot.queue, "last_backend": Backend.ETCD})

    @override
    def enqueue(self, record: UnitRecord, op: Operation) -> UnitRecord:
        return self._change(record, lambda queue: queue.enqueue(op))

    @override
    def cancel(self, record: UnitRecord, op_id: str, reason: str) -> UnitRecord:
        return self._change(record, lambda q: q.cancel(op_id, f"cancelled: {reason}", utcnow()))

    @override
    def live_queue(self, record: UnitRecord) -> UnitQueue:
        with self.session() as etcd:
            return etcd.store().load().queue

    @override
    def published(self, record: UnitRecord) -> UnitQueue | None:
        return None  # under etcd a peer write would wake every other unit at each transition

    @override
    def domain(self) -> DomainView:
        with self.session() as etcd:
            control = etcd.control()
            contenders = control.contenders()
            holders = tuple(_holder(etcd, c) for c in contenders if c.holding)
            waiting = tuple(Waiter(c.owner, sync=c.priority) for c in contenders if not c.holding)
            return DomainView(Backend.ETCD, holders, waiting, control.paused())

    @override
    def pause(self, reason: str, by: str) -> Pause:
        with self.session() as etcd:
            return etcd.control().pause(reason, by)

    @override
    def resume(self) -> bool:
        with self.session() as etcd:
            return etcd.control().resume()

    @override
    def force_release(self, unit: str, reason: str) -> list[int]:
        with self.session() as etcd:
            control = etcd.control()
            tokens = control.force_release(unit)
            if tokens:
                control.revoke_running(unit, tokens, f"force-released: {reason}")
            return tokens


def _holder(etcd: EtcdSession, holder: Contender) -> Holder:
    unit, token = holder.owner, holder.token or 0
    if holder.priority:
        return Holder(unit, token, sync=True)
    running = etcd.store(unit).load().queue.current
    if running is None:
        return Holder(unit, token)
    op = running.operation
    return Holder(unit, token, op.id, op.callback, running.granted_at)


class PeerSource(Protocol):
    """The peer relation as a backend sees it (``PeerLink``; the model in tests)."""

    def state(self) -> PeerState:
        """What the peer relation says now."""
        ...

    def leader_only(self, what: str) -> None:
        """Raise ``BackendError`` unless this unit is the leader."""
        ...

    def write_pause(self, pause: Pause | None) -> None:
        """Leader: pause (or resume) peer grants."""
        ...

    def write_revocation(self, unit: str, revocation: Revocation) -> None:
        """Leader: take the slot from ``unit``'s running operation."""
        ...


@dataclass(frozen=True)
class PeerLink:
    """The unit's side of the peer relation: the leader alone writes the application bag."""

    relation: ops.Relation
    app: ops.Application
    unit: ops.Unit

    def state(self) -> PeerState:
        """What the peer relation says now."""
        return peer_relation.read(self.relation, self.app, self.unit)

    def leader_only(self, what: str) -> None:
        """Refuse ``what`` on a non-leader unit: only the leader writes grants and pauses."""
        if not self.unit.is_leader():
            raise BackendError(
                f"under the peer backend the leader keeps the lock: run {what} on the leader unit"
            )

    def write_pause(self, pause: Pause | None) -> None:
        """Leader: pause (or resume) peer grants."""
        peer_relation.write_pause(self.relation, self.app, pause)

    def write_revocation(self, unit: str, revocation: Revocation) -> None:
        """Leader: take the slot from ``unit``'s running operation."""
        peer_relation.write_revocation(self.relation, self.app, unit, revocation)


class LocalLock(LockBackend):
    """peer or none grants: the record is the unit's queue; the leader grants (under peer)."""

    queue_is_local = True

    def __init__(self, granting: Backend, peer: PeerSource | None, unit: str) -> None:
        self.granting: Backend | None = granting
        self._peer = peer
        self._unit = unit

    def _state(self) -> PeerState:
        return self._peer.state() if self._peer else PeerState()

    @override
    def sync(self, record: UnitRecord, bag: PrincipalBag, on_grant: bool) -> UnitRecord:
        granting = self.granting or Backend.NONE
        return sync_locally(record, bag, granting, self._state(), self._unit)

    @override
    def enqueue(self, record: UnitRecord, op: Operation) -> UnitRecord:
        return record.model_copy(update={"queue": record.queue.enqueue(op)})

    @override
    def cancel(self, record: UnitRecord, op_id: str, reason: str) -> UnitRecord:
        queue = record.queue.cancel(op_id, f"cancelled: {reason}", utcnow())
        return record.model_copy(update={"queue": queue})

    @override
    def live_queue(self, record: UnitRecord) -> UnitQueue:
        return record.queue

    @override
    def published(self, record: UnitRecord) -> UnitQueue | None:
        """The queue, less the claim of the leader's grant (``published_queue``)."""
        state = self._state()
        grant = state.schedule.grants.get(self._unit) if self.granting is Backend.PEER else None
        return published_queue(record.queue, grant, state.queues.get(self._unit))

    @override
    def domain(self) -> DomainView:
        """The leader's grants, and each unit's waiting head in the leader's grant order.

        First-time requests first, oldest first (``peer_scheduler``).
        """
        state = self._state()
        present = state.epochs.keys() | state.queues.keys()
        grants = sorted(
            (g for g in state.schedule.grants.values() if g.unit in present),
            key=lambda g: g.token,
        )
        holders = tuple(self._holder(state, g.unit, g.token) for g in grants)
        heads = [
            (unit, queue.pending[0])
            for unit, queue in state.queues.items()
            if queue.pending and queue.current is None and unit not in state.schedule.grants
        ]
        heads.sort(key=lambda item: (item[1].attempt > 0, item[1].requested_at, item[0]))
        waiting = tuple(Waiter(unit, op.id) for unit, op in heads)
        return DomainView(self.granting, holders, waiting, state.pause)

    @staticmethod
    def _holder(state: PeerState, unit: str, token: int) -> Holder:
        """A grant's holder; ``since`` only if its unit published the claim.

        A unit does not publish the claim of its grant (``published_queue``): its operation
        shows at the head of its queue, and the grant's time is not known here.
        """
        queue = state.queues.get(unit, UnitQueue())
        running = queue.current
        if running is None or running.token != token:
            grant = state.schedule.grants[unit]
            head = queue.pending[0] if queue.pending else None
            callback = head.callback if head is not None and head.id == grant.op_id else None
            return Holder(unit, token, grant.op_id, callback)
        op = running.operation
        return Holder(unit, token, op.id, op.callback, running.granted_at)

    def _peer_leader(self, what: str) -> PeerSource:
        if self.granting is not Backend.PEER or self._peer is None:
            raise BackendError(f"nothing grants now (backend {self.granting}): {what} is moot")
        self._peer.leader_only(what)
        return self._peer

    @override
    def pause(self, reason: str, by: str) -> Pause:
        peer = self._peer_leader("pause")
        pause = Pause(reason=reason, by=by, since=utcnow())
        peer.write_pause(pause)
        return pause

    @override
    def resume(self) -> bool:
        peer = self._peer_leader("resume")
        was = peer.state().pause is not None
        peer.write_pause(None)
        return was

    @override
    def force_release(self, unit: str, reason: str) -> list[int]:
        """Revoke the unit's running operation, or its grant never claimed.

        A grant is never claimed when the unit's machine is down. Either way the operation ends
        ``revoked`` and its slot goes to the next unit.
        """
        peer = self._peer_leader("force-release")
        state = peer.state()
        running = state.queues.get(unit, UnitQueue()).current
        grant = state.schedule.grants.get(unit)
        if running is not None:
            revocation = Revocation(running.token, reason, running.operation.id)
        elif grant is not None:
            revocation = Revocation(grant.token, reason, grant.op_id)
        else:
            return []
        peer.write_revocation(unit, revocation)
        return [revocation.token]


class UnreadyLock(LockBackend):
    """etcd is chosen but this unit cannot use it yet: nothing is taken, nothing granted."""

    granting: Backend | None = None
    queue_is_local = False

    def __init__(self, waiting_for: str) -> None:
        self._why = f"etcd is not usable yet ({waiting_for}): nothing changed"

    @override
    def sync(self, record: UnitRecord, bag: PrincipalBag, on_grant: bool) -> UnitRecord:
        return record  # requests wait in the principal's bag until etcd can take them

    @override
    def enqueue(self, record: UnitRecord, op: Operation) -> UnitRecord:
        raise BackendError(self._why)

    @override
    def cancel(self, record: UnitRecord, op_id: str, reason: str) -> UnitRecord:
        raise BackendError(self._why)

    @override
    def live_queue(self, record: UnitRecord) -> UnitQueue:
        return record.queue

    @override
    def published(self, record: UnitRecord) -> UnitQueue | None:
        return None

    @override
    def domain(self) -> DomainView:
        return DomainView(None)

    @override
    def pause(self, reason: str, by: str) -> Pause:
        raise BackendError(self._why)

    @override
    def resume(self) -> bool:
        raise BackendError(self._why)

    @override
    def force_release(self, unit: str, reason: str) -> list[int]:
        raise BackendError(self._why)


def select(
    decided: Backend,
    *,
    etcd: EtcdSettings | None,
    peer: PeerSource | None,
    unit: str,
    capacity: int,
    waiting_for: str,
    etcd_lock: type[EtcdLock] = EtcdLock,
) -> LockBackend:
    """The one place a unit's backend is chosen, from the leader's decision.

    ``etcd_lock`` is the etcd backend's class: a model of etcd in tests subclasses it.
    """
    home = queue_home(decided, etcd is not None)
    if home is Backend.ETCD and etcd is not None:
        return etcd_lock(etcd, unit, capacity)
    if home is None:
        return UnreadyLock(waiting_for)
    return LocalLock(home, peer, unit)
