"""Random interleavings of requests, results, etcd failures and recoveries, leader passes, and
units joining and leaving, driven through the charm's own decision functions.

The model keeps each unit's record as the charm does. etcd is a FIFO semaphore of size k.
``local_sync``, ``schedule`` and ``choose`` are the real code. The full simulator runs the same
scenarios with real processes, but only a handful fit in CI time; this runs thousands.

Invariants, checked after every step:
- never more than k operations granted and unanswered;
- every accepted operation is executed, or dropped with a reason, once things settle;
- the peer scheduler never grants a first-time request while an older one waits;
- after etcd returns and the queues drain, the backend is etcd again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from hypothesis import event, given, settings
from hypothesis import strategies as st
from rollingops_charm.intake import local_sync
from rollingops_charm.unit_record import UnitRecord
from rollingops_principal import PrincipalBag, Request, Result

from rollingops.backend_choice import Backend, Fallback, Health, choose
from rollingops.models import Operation, Outcome
from rollingops.peer_scheduler import Schedule, schedule

T0 = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)


@dataclass
class Unit:
    record: UnitRecord = field(default_factory=UnitRecord)
    requests: list[Request] = field(default_factory=list[Request])
    results: list[Result] = field(default_factory=list[Result])


@dataclass
class Model:
    capacity: int
    units: dict[str, Unit] = field(default_factory=dict[str, Unit])
    backend: Backend | None = None
    epoch: int = 0
    peer: Schedule = field(default_factory=lambda: Schedule({}, 1))
    etcd_up: bool = True
    etcd_failed: set[str] = field(default_factory=set[str])
    etcd_order: list[str] = field(default_factory=list[str])
    etcd_holders: set[str] = field(default_factory=set[str])
    """Units holding an etcd slot: etcd knows nothing of operations granted by the peer side."""
    etcd_token: int = 1000
    clock: int = 0
    accepted: set[str] = field(default_factory=set[str])
    executed: set[str] = field(default_factory=set[str])
    gone: set[str] = field(default_factory=set[str])
    grants_checked: int = 0
    peak: int = 0

    # -- the charm's parts -------------------------------------------------------------------

    def lead(self) -> None:
        health = Health(
            etcd_usable=self.etcd_up,
            etcd_failed=bool(self.etcd_failed & set(self.units)),
            peer_busy=bool(self.peer.grants)
            or any(
                u.record.queue.has_work
                for u in self.units.values()
                if self.backend is not Backend.ETCD
            ),
        )
        chosen = choose(self.backend, health, Fallback.PEER)
        if chosen is not self.backend:
            self.backend, self.epoch = chosen, self.epoch + 1
            if chosen is not Backend.PEER:
                self.peer = Schedule({}, self.peer.next_token)
            return
        if chosen is Backend.PEER:
            queues = {name: u.record.queue for name, u in self.units.items()}
            before = set(self.peer.grants)
            self.peer = schedule(queues, self.peer.grants, self.capacity, self.peer.next_token)
            self._check_order(queues, set(self.peer.grants) - before)

    def _check_order(self, queues: dict[str, object], granted: set[str]) -> None:
        """No first-time request left waiting is older than one granted in this pass."""

        def head(name: str) -> Operation | None:
            queue = self.units[name].record.queue
            return queue.pending[0] if queue.pending and queue.current is None else None

        new = [h for n in granted if (h := head(n)) is not None and h.attempt == 0]
        left = [
            h
            for n in queues
            if n not in self.peer.grants
            if (h := head(n)) is not None and h.attempt == 0
        ]
        if new and left:
            assert max(h.requested_at for h in new) <= min(h.requested_at for h in left)
        self.grants_checked += len(new)

    def sync(self, name: str) -> None:
        unit = self.units[name]
        bag = PrincipalBag(requests=tuple(unit.requests), results=tuple(unit.results))
        if self.backend is Backend.ETCD and self.etcd_up:
            self._etcd_sync(unit, bag)
        else:
            grant = self.peer.grants.get(name) if self.backend is Backend.PEER else None
            unit.record = local_sync(unit.record, bag, self.backend or Backend.NONE, grant, T0)
        self._settle_requests(unit)

    def _etcd_sync(self, unit: Unit, bag: PrincipalBag) -> None:
        """Under etcd the charm applies requests and results; the worker finishes."""
        record = local_sync(unit.record, bag, Backend.NONE, None, T0)
        unit.record = record.model_copy(update={"last_backend": Backend.ETCD})

    def etcd_grant(self) -> None:
        """The etcd semaphore: FIFO among units with work, at most k running."""
        if self.backend is not Backend.ETCD or not self.etcd_up:
            return
        self.etcd_holders = {
            n
            for n in self.etcd_holders
            if n in self.units and self.units[n].record.queue.current is not None
        }
        running = list(self.etcd_holders)
        for name in [n for n in self.units if n not in self.etcd_order]:
            if self.units[name].record.queue.pending:
                self.etcd_order.append(name)
        self.etcd_order = [n for n in self.etcd_order if n in self.units]
        for name in list(self.etcd_order):
            if len(running) >= self.capacity:
                break
            queue = self.units[name].record.queue
            if queue.current is None and queue.pending:
                self.etcd_token += 1
                self.units[name].record = self.units[name].record.model_copy(
                    update={"queue": queue.claim(self.etcd_token, T0)}
                )
                self.etcd_order.remove(name)
                self.etcd_holders.add(name)
                running.append(name)

    # -- the principal -----------------------------------------------------------------------

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
        """The principal runs the granted operation and reports (once per attempt)."""
        unit = self.units[name]
        current = unit.record.queue.current
        if current is None or current.result is not None:
            return
        op = current.operation
        self.executed.add(op.id)
        unit.results = [Result(id=op.id, result=result, attempt=op.attempt, finished_at=T0)]  # type: ignore[arg-type]

    def worker_finish(self, name: str) -> None:
        """Under etcd the worker applies the reported result in etcd (here: the record)."""
        unit = self.units[name]
        current = unit.record.queue.current
        if self.backend is Backend.ETCD and self.etcd_up and current and current.result:
            queue, _ = unit.record.queue.finish(T0)
            unit.record = unit.record.model_copy(update={"queue": queue})

    def _settle_requests(self, unit: Unit) -> None:
        seen = set(unit.record.seen)
        self.accepted |= {r.id for r in unit.requests if r.id in seen} - self._merged(unit)
        unit.requests = [r for r in unit.requests if r.id not in seen]

    @staticmethod
    def _merged(unit: Unit) -> set[str]:
        return {m.id for m in unit.record.merged}

    def check(self) -> None:
        running = [
            n
            for n, u in self.units.items()
            if u.record.queue.current is not None and u.record.queue.current.result is None
        ]
        self.peak = max(self.peak, len(running))
        assert len(running) <= self.capacity, f"{running} run at once (k={self.capacity})"


UNIT_NAMES = [f"app/{n}" for n in range(4)]
RESULTS = ["release", "release", "retry-release", "retry-hold"]
step = st.one_of(
    st.tuples(st.just("request"), st.sampled_from(UNIT_NAMES)),
    st.tuples(st.just("tick"), st.just(""), st.sampled_from(RESULTS)),
    st.tuples(st.just("tick"), st.just(""), st.sampled_from(RESULTS)),
    st.tuples(st.just("etcd-down"), st.just("")),
    st.tuples(st.just("etcd-up"), st.just("")),
    st.tuples(st.just("worker-gives-up"), st.sampled_from(UNIT_NAMES)),
    st.tuples(st.just("leave"), st.sampled_from(UNIT_NAMES)),
    st.tuples(st.just("join"), st.sampled_from(UNIT_NAMES)),
)


def tick(model: Model, result: str) -> None:
    """One round of hooks: the leader's pass, etcd's grants, every unit syncing and answering."""
    for kind in ("lead", "etcd-grant", "lead"):
        run(model, kind)
    for name in list(model.units):
        for kind in ("sync", "answer", "sync", "finish", "sync"):
            run(model, kind, name, result)


def run(model: Model, kind: str, name: str = "", result: str = "release") -> None:
    present = name in model.units
    if kind == "request" and present:
        model.request(name)
    elif kind == "sync" and present:
        model.sync(name)
    elif kind == "lead":
        model.lead()
    elif kind == "etcd-grant":
        model.etcd_grant()
    elif kind == "answer" and present:
        model.answer(name, result)
    elif kind == "finish" and present:
        model.worker_finish(name)
    elif kind == "etcd-down":
        model.etcd_up = False
    elif kind == "etcd-up":
        model.etcd_up, model.etcd_failed = True, set()
    elif kind == "worker-gives-up" and not model.etcd_up:
        model.etcd_failed.add(name)
    elif kind == "leave" and present and len(model.units) > 1:
        unit = model.units.pop(name)
        model.gone |= unit.record.queue.operation_ids() | {r.id for r in unit.requests}
    elif kind == "join" and not present:
        model.units[name] = Unit()
    elif kind == "tick":
        tick(model, result)
    model.check()


def drain(model: Model) -> None:
    """etcd back, everyone keeps syncing and answering 'release' until nothing is left."""
    run(model, "etcd-up")
    for _ in range(300):
        tick(model, "release")
        idle = not any(u.record.queue.has_work or u.requests for u in model.units.values())
        if idle and model.backend is Backend.ETCD:
            return
    raise AssertionError("the model did not settle")


@settings(max_examples=2500, deadline=None)
@given(
    steps=st.lists(step, min_size=10, max_size=60),
    capacity=st.integers(1, 2),
    etcd_up=st.booleans(),
)
def test_switching_backends_never_exceeds_k_and_loses_nothing(steps, capacity, etcd_up):
    model = Model(capacity, units={name: Unit() for name in UNIT_NAMES[:3]}, etcd_up=etcd_up)
    for action in steps:
        run(model, *action)
    drain(model)
    event(f"backend switches: {min(model.epoch, 5)}")
    event(f"peer grants checked: {min(model.grants_checked, 3)}")
    event(f"peak running: {model.peak}")
    dropped = {
        e.id
        for u in model.units.values()
        for e in u.record.queue.history
        if e.outcome is Outcome.DROPPED
    }
    assert model.accepted - model.gone <= model.executed | dropped
    assert model.backend is Backend.ETCD
