"""Random interleavings of requests, results, operator commands, etcd failures and recoveries,
leader passes, and units joining and leaving, run through the charm's own code.

What is real here: the leader's pass (``rollingops.leadership.lead``: backend choice, epochs,
peer grants), each unit's backend choice (``backends.select``), its sync (``EtcdLock.sync``
and ``LocalLock.sync``: intake, claim, finish, run-exclusive), the operator's ``run-exclusive``
action (``actions.run_exclusive``). What is modelled: etcd (a per-unit queue store and a FIFO
semaphore of size k), the worker (claims under etcd and applies results), the peer databags
(what each unit last published, and for which epoch) and the principal.

Invariants, checked after every step:
- never more than k operations granted and unanswered, as the principals see them;
- a new claim never reuses a fencing token, and with k = 1 tokens strictly increase;
- no attempt of an operation runs twice;
- every accepted operation (principal's or operator's) is executed, or ended with a reason,
  once things settle; after etcd returns and the queues drain, the backend is etcd again.

``tests/charm/test_switching_model_catches.py`` reintroduces known bugs into these functions
and checks this model fails.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from rollingops_charm import actions, backends
from rollingops_charm.backends import EtcdLock
from rollingops_charm.unit_record import UnitRecord
from rollingops_principal import PrincipalBag, Request, Result

from rollingops import peer_scheduler
from rollingops.backend_choice import Backend, Fallback
from rollingops.control import Pause
from rollingops.etcd_client import EtcdSettings, EtcdUnavailableError
from rollingops.leadership import Decision, Leadership, PeerState, lead
from rollingops.models import Outcome, UnitQueue
from rollingops.peer_scheduler import Revocation, Schedule
from rollingops.store import QueueSnapshot

T0 = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)
SETTINGS = EtcdSettings(
    endpoints=["127.0.0.1:1"],
    ca_file=Path("ca.pem"),
    cert_file=Path("c.pem"),
    key_file=Path("c.key"),
    prefix="/rollingops/model/",
)
ENDED = {Outcome.DROPPED, Outcome.CANCELLED, Outcome.REVOKED, Outcome.LOCK_LOST}


class ModelStore:
    """One unit's queue in the model's etcd (the ``QueueStore`` the real sync writes to)."""

    def __init__(self, etcd: ModelEtcd) -> None:
        self.etcd = etcd
        self.snapshot = QueueSnapshot(UnitQueue(), 0, 0)

    def load(self) -> QueueSnapshot:
        self.etcd.reachable()
        return self.snapshot

    def update(
        self,
        change: Callable[[UnitQueue], UnitQueue],
        known: QueueSnapshot | None = None,
        conditions: Any = (),
    ) -> QueueSnapshot:
        self.etcd.reachable()
        new = change(self.snapshot.queue)
        if new != self.snapshot.queue:
            self.etcd.revision += 1
            self.snapshot = QueueSnapshot(new, self.etcd.revision, self.etcd.revision)
        return self.snapshot


@dataclass
class ModelEtcd:
    up: bool = True
    revision: int = 0
    stores: dict[str, ModelStore] = field(default_factory=dict[str, ModelStore])
    order: list[str] = field(default_factory=list[str])
    """Units in the semaphore, oldest entry first."""
    token: int = 1000
    floor: int = 0

    def reachable(self) -> None:
        if not self.up:
            raise EtcdUnavailableError("model etcd is down")

    def store(self, unit: str) -> ModelStore:
        return self.stores.setdefault(unit, ModelStore(self))


class ModelSession:
    def __init__(self, etcd: ModelEtcd, unit: str) -> None:
        self._etcd, self._unit = etcd, unit

    def store(self, unit: str | None = None) -> ModelStore:
        return self._etcd.store(unit or self._unit)


def model_etcd_lock(etcd: ModelEtcd) -> type[EtcdLock]:
    """The real ``EtcdLock`` with its sessions opened on the model's etcd."""

    class ModelEtcdLock(EtcdLock):
        @contextlib.contextmanager
        def session(self) -> Iterator[Any]:
            yield ModelSession(etcd, self._unit)

    return ModelEtcdLock


@dataclass
class Unit:
    record: UnitRecord = field(default_factory=UnitRecord)
    requests: list[Request] = field(default_factory=list[Request])
    results: list[Result] = field(default_factory=list[Result])
    published: UnitQueue | None = None
    epoch: int = -1
    etcd_failed: bool = False


class ModelPeer:
    """The peer relation as a unit sees it (the ``PeerSource`` the real backends read)."""

    def __init__(self, model: Model, unit: str) -> None:
        self.model, self.unit = model, unit

    def state(self) -> PeerState:
        return self.model.peer_state()

    def leader_only(self, what: str) -> None:
        return None

    def write_pause(self, pause: Pause | None) -> None:
        self.model.pause = pause

    def write_revocation(self, unit: str, revocation: Revocation) -> None:
        self.model.revoked = {**self.model.revoked, unit: revocation}


@dataclass
class FakeActionEvent:
    params: dict[str, Any]
    results: dict[str, Any] | None = None
    failure: str | None = None

    def set_results(self, results: dict[str, Any]) -> None:
        self.results = results

    def fail(self, message: str) -> None:
        self.failure = message


class Records:
    def __init__(self, unit: Unit) -> None:
        self.unit = unit

    def load(self) -> UnitRecord:
        return self.unit.record

    def save(self, record: UnitRecord) -> None:
        self.unit.record = record


@dataclass
class Model:
    capacity: int
    units: dict[str, Unit] = field(default_factory=dict[str, Unit])
    etcd: ModelEtcd = field(default_factory=ModelEtcd)
    decision: Decision | None = None
    schedule: Schedule = field(default_factory=lambda: Schedule({}, 1))
    pause: Pause | None = None
    revoked: dict[str, Revocation] = field(default_factory=dict[str, Revocation])
    clock: int = 0
    accepted: set[str] = field(default_factory=set[str])
    operator_ops: set[str] = field(default_factory=set[str])
    executed: set[tuple[str, int]] = field(default_factory=set[tuple[str, int]])
    claimed_tokens: list[int] = field(default_factory=list[int])
    gone: set[str] = field(default_factory=set[str])
    peak: int = 0
    switches: int = 0

    # -- the charm's parts (real code) ------------------------------------------------------

    def peer_state(self) -> PeerState:
        units = self.units.items()
        return PeerState(
            decision=self.decision,
            schedule=self.schedule,
            queues={n: u.published for n, u in units if u.published is not None},
            epochs={n: u.epoch for n, u in units if u.epoch >= 0},
            etcd_failed=frozenset(n for n, u in units if u.etcd_failed),
            pause=self.pause,
            revoked=self.revoked,
        )

    def backend(self, name: str) -> backends.LockBackend:
        state = self.peer_state()
        return backends.select(
            state.backend,
            etcd=SETTINGS,
            peer=ModelPeer(self, name),
            unit=name,
            capacity=self.capacity,
            waiting_for="",
            etcd_lock=model_etcd_lock(self.etcd),
        )

    def lead(self) -> None:
        known = Leadership(
            members=frozenset(self.units),
            etcd_usable=True,
            fallback=Fallback.PEER,
            capacity=self.capacity,
        )
        step = lead(self.peer_state(), known, self.fence, T0)
        if self.decision is None or step.decision.backend is not self.decision.backend:
            self.switches += 1
        self.decision, self.schedule, self.revoked = (
            step.decision,
            step.schedule,
            dict(step.revoked),
        )

    def fence(self, token: int) -> bool:
        if not self.etcd.up:
            return False
        self.etcd.floor = max(self.etcd.floor, token)
        return True

    def sync(self, name: str, on_grant: bool = False) -> None:
        """One hook of the unit: the body of the charm's ``_sync_once``."""
        unit = self.units[name]
        state = self.peer_state()
        backend = self.backend(name)
        before = unit.record.queue.current
        bag = PrincipalBag(requests=tuple(unit.requests), results=tuple(unit.results))
        try:
            unit.record = backend.sync(unit.record, bag, on_grant)
            if backend.granting is Backend.ETCD:
                unit.etcd_failed = False
        except EtcdUnavailableError:
            pass
        unit.published = backend.published(unit.record)
        unit.epoch = state.epoch
        if backend.queue_is_local and self.etcd.up:
            unit.etcd_failed = False  # the update-status probe
        self._claimed(before, unit.record.queue)
        self._settle_requests(unit)

    def run_exclusive(self, name: str) -> None:
        """The operator's action hook: the real action function, then the charm's sync."""
        self.queue_command(name)
        self.sync(name)

    def queue_command(self, name: str) -> None:
        """The operator's ``run-exclusive``, through the real action function."""
        unit = self.units[name]
        context = actions.ActionContext(
            unit=name,
            backend=self.backend(name),
            records=Records(unit),  # type: ignore[arg-type]
            worker_running=lambda: True,
            credentials="model",
            worker_events=list,
        )
        action = FakeActionEvent({"command": "true", "timeout": 10, "max-retry": 0})
        try:
            actions.run_exclusive(context, action)  # type: ignore[arg-type]
        except EtcdUnavailableError:
            return
        if action.results is not None:
            self.operator_ops.add(action.results["op"])

    def operator(self, name: str, action: str) -> None:
        """The leader's pause, resume or force-release of ``name``, through the real actions,
        under peer (under etcd they act on etcd's own keys, which this model does not hold)."""
        leader = next(iter(self.units))
        backend = self.backend(leader)
        if not isinstance(backend, backends.LocalLock):
            return
        context = actions.ActionContext(
            unit=leader,
            backend=backend,
            records=Records(self.units[leader]),  # type: ignore[arg-type]
            worker_running=lambda: True,
            credentials="model",
            worker_events=list,
        )
        params = {"reason": "model", "unit": name}
        run_action = {
            "pause": actions.pause,
            "resume": actions.resume,
            "force-release": actions.force_release,
        }[action]
        run_action(context, FakeActionEvent(params))  # type: ignore[arg-type]
        self.sync(leader)

    # -- etcd's worker (modelled) -----------------------------------------------------------

    def worker(self) -> None:
        """Each unit's worker under etcd: finish answered operations, grant FIFO up to k."""
        if self.backend_decided() is not Backend.ETCD or not self.etcd.up:
            return
        for name in list(self.units):
            store = self.etcd.store(name)
            current = store.snapshot.queue.current
            if current is not None and current.result is not None:
                store.update(lambda q: q.finish(T0)[0])
        for name in self.units:
            queue = self.etcd.store(name).snapshot.queue
            if queue.pending and queue.current is None and name not in self.etcd.order:
                self.etcd.order.append(name)
        holders = [n for n in self.units if self.etcd.store(n).snapshot.queue.current]
        self.etcd.order = [n for n in self.etcd.order if n in self.units]
        for name in list(self.etcd.order):
            if len(holders) >= self.capacity:
                break
            self.etcd.order.remove(name)
            store = self.etcd.store(name)
            if store.snapshot.queue.current is None and store.snapshot.queue.pending:
                self.etcd.token = max(self.etcd.token, self.etcd.floor) + 1
                store.update(lambda q, token=self.etcd.token: q.claim(token, T0))
                holders.append(name)
                self.sync(name, on_grant=True)  # the worker fires lock-granted

    def backend_decided(self) -> Backend:
        return self.peer_state().backend

    # -- the principal ----------------------------------------------------------------------

    def request(self, name: str) -> None:
        self.clock += 1
        op_id = f"{name.replace('/', '_')}-{self.clock}"
        at = T0 + dt.timedelta(seconds=self.clock)
        self.units[name].requests.append(
            Request(
                id=op_id,
                callback="restart",
                kwargs={"n": self.clock},
                max_retry=2,
                requested_at=at,
            )
        )

    def answer(self, name: str, result: str) -> None:
        """The principal runs the granted operation once per attempt and reports."""
        unit = self.units[name]
        current = unit.record.queue.current
        if current is None or current.result is not None:
            return
        op = current.operation
        if op.callback == "run-exclusive":
            return  # the charm runs those itself
        attempt = (op.id, op.attempt)
        if any(r.id == op.id and r.attempt == op.attempt for r in unit.results):
            return  # answered; the subordinate has not taken it yet
        assert attempt not in self.executed, f"{attempt} ran twice"
        self.executed.add(attempt)
        done = Result(id=op.id, result=result, attempt=op.attempt, finished_at=T0)  # type: ignore[arg-type]
        unit.results = [done]

    # -- invariants -------------------------------------------------------------------------

    def _claimed(self, before: Any, after: UnitQueue) -> None:
        current = after.current
        if current is None or (before is not None and before.token == current.token):
            return  # no claim, or the same claim seen again
        assert current.token not in self.claimed_tokens, f"token {current.token} claimed twice"
        if self.capacity == 1 and self.claimed_tokens:
            assert current.token > max(self.claimed_tokens), "tokens must increase"
        self.claimed_tokens.append(current.token)
        if current.operation.callback == "run-exclusive":
            self.executed.add((current.operation.id, current.operation.attempt))

    def _settle_requests(self, unit: Unit) -> None:
        seen = set(unit.record.seen)
        merged = {m.id for m in unit.record.merged}
        self.accepted |= {r.id for r in unit.requests if r.id in seen} - merged
        unit.requests = [r for r in unit.requests if r.id not in seen]

    def check(self) -> None:
        running = [
            n
            for n, u in self.units.items()
            if u.record.queue.current is not None
            and u.record.queue.current.result is None
            and not peer_scheduler.is_revoked(u.record.queue, self.revoked.get(n))
        ]  # an operation the operator force-released no longer counts: its token is stale
        self.peak = max(self.peak, len(running))
        assert len(running) <= self.capacity, f"{running} run at once (k={self.capacity})"


UNIT_NAMES = [f"app/{n}" for n in range(4)]
RESULTS = ["release", "release", "retry-release", "retry-hold"]
step = st.one_of(
    st.tuples(st.just("request"), st.sampled_from(UNIT_NAMES)),
    st.tuples(st.just("tick"), st.just(""), st.sampled_from(RESULTS)),
    st.tuples(st.just("tick"), st.just(""), st.sampled_from(RESULTS)),
    st.tuples(st.just("sync"), st.sampled_from(UNIT_NAMES)),
    st.tuples(st.just("lead"), st.just("")),
    st.tuples(st.just("worker"), st.just("")),
    st.tuples(st.just("etcd-down"), st.just("")),
    st.tuples(st.just("etcd-up"), st.just("")),
    st.tuples(st.just("worker-gives-up"), st.sampled_from(UNIT_NAMES)),
    st.tuples(st.just("run-exclusive"), st.sampled_from(UNIT_NAMES)),
    st.tuples(st.just("pause"), st.just("")),
    st.tuples(st.just("resume"), st.just("")),
    st.tuples(st.just("force-release"), st.sampled_from(UNIT_NAMES)),
    st.tuples(st.just("leave"), st.sampled_from(UNIT_NAMES)),
    st.tuples(st.just("join"), st.sampled_from(UNIT_NAMES)),
)


def tick(model: Model, result: str) -> None:
    """One round of hooks: the leader's pass, the workers, every unit syncing and answering."""
    for kind in ("lead", "worker", "lead"):
        run(model, kind)
    for name in list(model.units):
        for kind in ("sync", "answer", "sync", "worker", "sync"):
            run(model, kind, name, result)


def leave(model: Model, name: str) -> None:
    if len(model.units) > 1:
        unit = model.units.pop(name)
        model.gone |= unit.record.queue.operation_ids() | {r.id for r in unit.requests}
        # What it ended before leaving (a revoked operation) leaves with its history.
        model.gone |= {entry.id for entry in unit.record.queue.history}
        model.gone |= model.etcd.store(name).snapshot.queue.operation_ids()


def gives_up(model: Model, name: str) -> None:
    if not model.etcd.up:
        model.units[name].etcd_failed = True


UNIT_STEPS: dict[str, Any] = {
    "request": lambda model, name: model.request(name),
    "sync": lambda model, name: model.sync(name),
    "run-exclusive": lambda model, name: model.run_exclusive(name),
    "worker-gives-up": gives_up,
    "leave": leave,
}


def run(model: Model, kind: str, name: str = "", result: str = "release") -> None:
    """One step; unit steps are skipped for a unit that is not (or no longer) there."""
    present = name in model.units
    if kind in UNIT_STEPS and present:
        UNIT_STEPS[kind](model, name)
    elif kind == "answer" and present:
        model.answer(name, result)
    elif kind in ("pause", "resume", "force-release"):
        model.operator(name, kind)
    elif kind in ("lead", "worker"):
        getattr(model, kind)()
    elif kind in ("etcd-down", "etcd-up"):
        model.etcd.up = kind == "etcd-up"
    elif kind == "join" and not present:
        model.units[name] = Unit()
        model.etcd.stores.pop(name, None)
    elif kind == "tick":
        tick(model, result)
    model.check()


def drain(model: Model) -> None:
    """etcd back, grants resumed, everyone syncs and answers 'release' until nothing is left."""
    run(model, "etcd-up")
    model.pause = None
    for _ in range(300):
        tick(model, "release")
        idle = not any(
            u.record.queue.has_work or u.requests or model.etcd.store(n).snapshot.queue.has_work
            for n, u in model.units.items()
        )
        if idle and model.backend_decided() is Backend.ETCD:
            return
    raise AssertionError("the model did not settle")


def ended(model: Model) -> set[str]:
    """Operations that left a queue for good with a reason (not run, by design)."""
    return {
        e.id for u in model.units.values() for e in u.record.queue.history if e.outcome in ENDED
    }


def explore(steps: list[tuple[str, ...]], capacity: int, etcd_up: bool) -> Model:
    """Run ``steps`` on a 3-unit model, drain it and check nothing accepted was lost."""
    model = Model(capacity, units={name: Unit() for name in UNIT_NAMES[:3]})
    model.etcd.up = etcd_up
    for action in steps:
        run(model, *action)
    drain(model)
    executed = {op for op, _attempt in model.executed}
    lost = (model.accepted | model.operator_ops) - model.gone - executed - ended(model)
    assert not lost, f"accepted and never run: {sorted(lost)}"
    assert model.backend_decided() is Backend.ETCD
    return model


@settings(max_examples=1500, deadline=None)
@example(  # a revoked operation whose unit then left: ended, not lost (found by a CI run)
    steps=[
        ("request", "app/0"),
        ("request", "app/1"),
        ("worker-gives-up", "app/0"),
        ("tick", "", "release"),
        ("leave", "app/0"),
        ("lead", ""),
        ("force-release", "app/1"),
        ("leave", "app/1"),
    ],
    capacity=1,
    etcd_up=False,
)
@given(
    steps=st.lists(step, min_size=10, max_size=60),
    capacity=st.integers(1, 2),
    etcd_up=st.booleans(),
)
def test_switching_backends_never_exceeds_k_and_loses_nothing(steps, capacity, etcd_up):
    model = explore(steps, capacity, etcd_up)
    event(f"backend switches: {min(model.switches, 5)}")
    event(f"operator commands: {min(len(model.operator_ops), 3)}")
    event(f"peak running: {model.peak}")
