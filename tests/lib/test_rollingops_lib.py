"""The principal-side library on ops.testing: requests out, grants in, results back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, ClassVar

import ops
import pytest
from ops import testing
from rollingops_charm.intake import absorb, apply, take
from rollingops_charm.principal import PrincipalLink, subordinate_bag
from rollingops_charm.unit_record import UnitRecord
from rollingops_principal import (
    LockLostEvent,
    LockResult,
    PrincipalBag,
    RollingOps,
    RollingOpsError,
    SubordinateBag,
    SubordinateState,
)
from rollingops_principal.protocol import MAX_REQUESTS, Finished, Grant, Rejection
from rollingops_principal.testing import (
    granted_relation,
    requests_of,
    results_of,
    subordinate_relation,
)

from rollingops.backend_choice import Backend
from rollingops.models import Operation, Outcome

META = {"name": "principal", "provides": {"rollingops": {"interface": "rollingops"}}}
ACTIONS = {"restart": {"params": {"kwargs": {"type": "string"}, "callback": {"type": "string"}}}}
NOW = "2026-11-25T10:00:00+00:00"


class Principal(ops.CharmBase):
    """A principal using the library: ``restart`` is a callback; ``reload`` uses the event."""

    calls: ClassVar[list[dict[str, Any]]] = []
    outcome: ClassVar[Any] = None

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.rolling = RollingOps(
            self,
            callbacks={"restart": self._restart, "fenced": self._fenced, "guarded": self._guarded},
            events=("reload",),
        )
        framework.observe(self.rolling.on.lock_granted, self._on_granted)
        framework.observe(self.on.restart_action, self._on_action)

    def _restart(self, **kwargs: Any) -> str | None:
        Principal.calls.append(kwargs)
        if isinstance(Principal.outcome, Exception):
            raise Principal.outcome
        return Principal.outcome

    def _fenced(self, token: int, **kwargs: Any) -> None:
        Principal.calls.append({"token": token, **kwargs})

    def _guarded(self, rerun: bool, **kwargs: Any) -> None:
        Principal.calls.append({"rerun": rerun, **kwargs})

    def _on_granted(self, event: Any) -> None:
        Principal.calls.append({"event": event.op_id, "token": event.token, "rerun": event.rerun})
        self.rolling.finish(event.op_id, "release")

    def _on_action(self, event: ops.ActionEvent) -> None:
        kwargs = json.loads(event.params.get("kwargs", "{}"))
        op_id = self.rolling.request(event.params.get("callback", "restart"), kwargs)
        event.set_results({"op": op_id, "waiting": self.rolling.is_waiting("restart")})


@pytest.fixture(autouse=True)
def reset():
    Principal.calls = []
    Principal.outcome = None


@pytest.fixture
def ctx() -> testing.Context[Principal]:
    return testing.Context(Principal, meta=META, actions=ACTIONS)


def sub(granted: Grant | None = None, **fields: Any) -> dict[str, str]:
    state = SubordinateState(backend="etcd", status="granted" if granted else "waiting")
    return SubordinateBag(granted=granted, state=state, **fields).to_databag()


def grant(
    op_id: str, callback: str = "restart", attempt: int = 1, rerun: bool = False, **kwargs: Any
) -> Grant:
    return Grant(
        id=op_id,
        callback=callback,
        kwargs=kwargs,
        attempt=attempt,
        token=77,
        granted_at=NOW,
        backend="etcd",
        rerun=rerun,
    )


def asked(**callbacks: str) -> frozenset[testing.StoredState]:
    """The library's memory after this unit requested these operations (id=callback)."""
    memory = testing.StoredState(
        owner_path="Principal/RollingOps[rollingops-rollingops]", content={"requested": callbacks}
    )
    return frozenset({memory})


def relation(local: dict[str, str] | None = None, remote: dict[str, str] | None = None):
    return testing.Relation(
        "rollingops",
        remote_app_name="rollingops",
        local_unit_data=local or {},
        remote_units_data={0: remote or {}},
    )


def local_list(state: testing.State, key: str) -> list[dict[str, Any]]:
    data = state.get_relations("rollingops")[0].local_unit_data
    return json.loads(data.get(key) or "[]")


def test_request_writes_a_valid_request_and_reports_waiting(ctx):
    rel = relation()
    out = ctx.run(
        ctx.on.action("restart", params={"kwargs": '{"why": "config"}'}),
        testing.State(relations={rel}),
    )
    (written,) = local_list(out, "requests")
    assert written["id"] == ctx.action_results["op"]
    assert (written["callback"], written["kwargs"], written["max-retry"]) == (
        "restart",
        {"why": "config"},
        None,
    )
    assert ctx.action_results["waiting"] is True


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"callback": "rm -rf /"}, "unknown callback 'rm -rf /'"),
        ({"callback": "restrat"}, "unknown callback 'restrat': this charm registered"),
        ({"kwargs": json.dumps({"x": "y" * 40_000})}, "invalid request: Value error, kwargs are"),
    ],
)
def test_invalid_requests_raise_and_write_nothing(ctx, params, message):
    rel = relation()
    with pytest.raises(testing.errors.UncaughtCharmError) as raised:
        ctx.run(ctx.on.action("restart", params=params), testing.State(relations={rel}))
    assert isinstance(raised.value.__cause__, RollingOpsError)
    assert str(raised.value.__cause__).startswith(message)


def test_a_request_before_the_relation_is_kept_then_sent_when_it_appears(ctx):
    out = ctx.run(ctx.on.action("restart"), testing.State())
    op_id = ctx.action_results["op"]
    assert requests_of_nothing(out)
    rel = subordinate_relation()
    sent = ctx.run(ctx.on.relation_created(rel), dataclasses.replace(out, relations={rel}))
    assert [r.id for r in requests_of(sent)] == [op_id]
    again = ctx.run(ctx.on.relation_changed(sent.get_relation(rel.id)), sent)
    assert [r.id for r in requests_of(again)] == [op_id], "sent once, not twice"


def requests_of_nothing(state: testing.State) -> bool:
    return not state.relations


def test_state_says_requests_are_kept_until_the_relation_exists(ctx):
    out = ctx.run(ctx.on.action("restart"), testing.State())
    with ctx(ctx.on.update_status(), out) as manager:
        state = manager.charm.rolling.state
        assert state is not None
        assert (state.status, state.queue_length) == ("waiting", 1)
        assert "not related to rollingops yet" in state.message
        assert manager.charm.rolling.is_waiting("restart")


def test_no_more_than_the_request_limit_is_kept_before_the_relation(ctx):
    state = testing.State()
    for _ in range(MAX_REQUESTS):
        state = ctx.run(ctx.on.action("restart"), state)
    with pytest.raises(testing.errors.UncaughtCharmError) as raised:
        ctx.run(ctx.on.action("restart"), state)
    assert f"{MAX_REQUESTS} requests are already waiting" in str(raised.value.__cause__)


def test_a_returned_value_that_is_no_result_is_logged_and_reported_release(ctx, caplog):
    Principal.outcome = "retry_release"
    rel = granted_relation("a", "restart", {"x": 1})
    out = ctx.run(
        ctx.on.relation_changed(rel),
        testing.State(relations={rel}, stored_states=asked(a="restart")),
    )
    assert [(r.id, r.result) for r in results_of(out)] == [("a", "release")]
    assert "'restart' returned 'retry_release', not a result" in caplog.text
    assert "allowed are None, 'release', 'retry-release', 'retry-hold'" in caplog.text


def test_a_callback_may_return_the_result_enum(ctx):
    Principal.outcome = LockResult.RETRY_HOLD
    rel = granted_relation("a", "restart")
    out = ctx.run(
        ctx.on.relation_changed(rel),
        testing.State(relations={rel}, stored_states=asked(a="restart")),
    )
    assert [(r.id, r.result) for r in results_of(out)] == [("a", "retry-hold")]


def test_finish_with_a_result_that_is_none_raises_a_clear_error():
    context = testing.Context(Principal, meta=META, actions=ACTIONS)
    rel = granted_relation("b", "reload")
    with (
        context(context.on.update_status(), testing.State(relations={rel})) as manager,
        pytest.raises(RollingOpsError, match="'done' is not a result: allowed are None"),
    ):
        manager.charm.rolling.finish("b", "done")  # type: ignore[arg-type]


def test_granted_callback_runs_with_its_kwargs_and_releases(ctx):
    local = {
        "requests": json.dumps(
            [
                {
                    "id": "a",
                    "callback": "restart",
                    "kwargs": {"n": 1},
                    "max-retry": None,
                    "requested-at": NOW,
                }
            ]
        )
    }
    rel = relation(local, sub(grant("a", n=1), accepted=("a",)))
    state = testing.State(relations={rel}, stored_states=asked(a="restart"))
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    assert Principal.calls == [{"n": 1}]
    (result,) = local_list(out, "results")
    assert (result["id"], result["result"], result["attempt"]) == ("a", "release", 1)
    assert local_list(out, "requests") == [], "accepted requests are pruned"


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [("retry-hold", "retry-hold"), (RuntimeError("boom"), "retry-release")],
)
def test_callback_outcome_and_failure_become_results(ctx, outcome, expected):
    Principal.outcome = outcome
    rel = relation(remote=sub(grant("a")))
    state = testing.State(relations={rel}, stored_states=asked(a="restart"))
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    assert local_list(out, "results")[0]["result"] == expected


def test_a_grant_is_delivered_once_per_attempt(ctx):
    Principal.outcome = "retry-release"
    rel = relation(remote=sub(grant("a")))
    state = testing.State(relations={rel}, stored_states=asked(a="restart"))
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    same = out.get_relation(rel.id)
    out = ctx.run(ctx.on.relation_changed(same, remote_unit=0), out)
    assert len(Principal.calls) == 1
    again = relation(
        local=dict(out.get_relation(rel.id).local_unit_data), remote=sub(grant("a", attempt=2))
    )
    out = ctx.run(
        ctx.on.relation_changed(again, remote_unit=0),
        testing.State(relations={again}, stored_states=out.stored_states),
    )
    assert len(Principal.calls) == 2
    assert [r["attempt"] for r in local_list(out, "results")] == [2]


def test_without_a_callback_the_event_fires_with_the_token(ctx):
    rel = relation(remote=sub(grant("b", callback="reload")))
    state = testing.State(relations={rel}, stored_states=asked(b="reload"))
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    assert Principal.calls == [{"event": "b", "token": 77, "rerun": False}]
    assert local_list(out, "results")[0]["result"] == "release"


def test_finished_and_rejected_requests_stop_waiting(ctx):
    rel = relation()
    out = ctx.run(ctx.on.action("restart"), testing.State(relations={rel}))
    op_id = ctx.action_results["op"]
    remote = sub(
        finished=(Finished(id=op_id, outcome="done", attempts=1),),
        rejected=(Rejection(id="zzz", reason="bad"),),
    )
    done = relation(local=dict(out.get_relation(rel.id).local_unit_data), remote=remote)
    out = ctx.run(
        ctx.on.relation_changed(done, remote_unit=0),
        testing.State(relations={done}, stored_states=out.stored_states),
    )
    with ctx(ctx.on.update_status(), out) as manager:
        assert manager.charm.rolling.is_waiting() is False
        # The bag says waiting, but the only operation requested is finished: nothing waits.
        assert manager.charm.rolling.state == SubordinateState(backend="etcd", status="idle")


def test_a_subordinate_speaking_another_protocol_is_ignored(ctx):
    rel = relation(remote={"protocol": "9", "granted": json.dumps(grant("a").dump())})
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel}))
    assert Principal.calls == []
    assert local_list(out, "results") == []


def test_a_lost_lock_is_announced_once_and_the_operation_stops_waiting(ctx):
    rel = relation()
    out = ctx.run(ctx.on.action("restart"), testing.State(relations={rel}))
    op_id = ctx.action_results["op"]
    lost = Finished(id=op_id, outcome="lock-lost", attempts=1, reason="lease revoked")
    remote = sub(finished=(lost,))
    ended = relation(local=dict(out.get_relation(rel.id).local_unit_data), remote=remote)
    state = testing.State(relations={ended}, stored_states=out.stored_states)
    out = ctx.run(ctx.on.relation_changed(ended, remote_unit=0), state)
    announced = [e for e in ctx.emitted_events if isinstance(e, LockLostEvent)]
    assert [(e.op_id, e.callback, e.reason) for e in announced] == [
        (op_id, "restart", "lease revoked")
    ]
    ctx.emitted_events.clear()
    ctx.run(ctx.on.relation_changed(ended, remote_unit=0), out)
    assert not [e for e in ctx.emitted_events if isinstance(e, LockLostEvent)]
    with ctx(ctx.on.update_status(), out) as manager:
        assert manager.charm.rolling.is_waiting() is False


def test_a_callback_that_names_token_receives_the_fencing_token(ctx):
    rel = relation(remote=sub(grant("f", callback="fenced", size=3)))
    state = testing.State(relations={rel}, stored_states=asked(f="fenced"))
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    assert Principal.calls == [{"token": 77, "size": 3}]
    assert local_list(out, "results")[0]["result"] == "release"


def test_kwargs_cannot_shadow_the_token_of_a_callback_that_takes_it(ctx):
    rel = relation()
    params = {"callback": "fenced", "kwargs": json.dumps({"token": 1})}
    with pytest.raises(testing.errors.UncaughtCharmError, match="receives the fencing token"):
        ctx.run(ctx.on.action("restart", params=params), testing.State(relations={rel}))


# -- against the subordinate's real bags ---------------------------------------------------------
#
# The subordinate writes its bag only when the principal has something to act on (5 hooks per
# operation), so the principal must not take its ``state`` at face value. These tests show the
# principal only bags the real subordinate code writes, when it writes them.

T0 = dt.datetime(2026, 11, 25, 10, tzinfo=dt.timezone.utc)


class _OneRelation:
    """What ``PrincipalLink.publish`` uses of ``ops.Model``: our bag in the container relation."""

    unit = "rollingops/0"

    def __init__(self, bag: dict[str, str]) -> None:
        self._relation = SimpleNamespace(data={self.unit: bag})

    def get_relation(self, _name: str) -> Any:
        return self._relation


class Subordinate:
    """The subordinate unit, driven through the real code only.

    Its record changes by the charm's own intake (``take``/``apply``/``absorb``: enqueue and
    report on the real ``UnitQueue``) and the worker's transitions (``claim``, ``finish``,
    ``abandon``). Its bag is ``subordinate_bag`` of that record, written by the real
    ``PrincipalLink.publish`` at the end of a subordinate hook: only when something actionable
    changed. The worker's own transitions fire no hook unless it says so.
    """

    def __init__(self) -> None:
        self.record = UnitRecord()
        self.token = 0
        self.bag: dict[str, str] = {}
        self._link = PrincipalLink(_OneRelation(self.bag), "principal")  # type: ignore[arg-type]
        assert self.hook(), "the first publish always writes"

    def hook(self) -> bool:
        """A subordinate hook ends: publish; return whether the bag was written."""
        before = dict(self.bag)
        self._link.publish(subordinate_bag(self.record, backend=Backend.ETCD))
        return self.bag != before

    def sync(self, principal: Mapping[str, str]) -> bool:
        """``relation-changed`` from the principal: take its requests and results, publish."""
        intake = take(PrincipalBag.parse(principal), self.record.queue, set(self.record.seen))
        queue, applied = apply(self.record.queue, intake)
        self.record = absorb(self.record, queue, intake, applied)
        return self.hook()

    def grant(self) -> bool:
        """The worker claims the lock for the head operation and fires the grant hook."""
        self.token += 1
        self._set(self.record.queue.claim(self.token, T0))
        return self.hook()

    def regrant(self) -> bool:
        """The worker died before the result reached etcd; restarted, it grants again."""
        self.token += 1
        self._set(self.record.queue.regrant(self.token, T0))
        return self.hook()

    def work(self) -> None:
        """The worker applies the reported result in etcd: no hook, so nothing is written."""
        queue, _kept = self.record.queue.finish(T0)
        self._set(queue)

    def lose(self, outcome: str, reason: str) -> bool:
        """The running operation ends for good (``lock-lost``: the worker lost the lock;
        ``revoked``: the operator force-released it); the queue-changed hook fires.
        """
        self._set(self.record.queue.abandon(Outcome(outcome), reason, T0))
        return self.hook()

    def _set(self, queue: Any) -> None:
        self.record = self.record.model_copy(update={"queue": queue})


def written(state: testing.State) -> dict[str, str]:
    return dict(state.get_relations("rollingops")[0].local_unit_data)


def with_bag(state: testing.State, sub: Subordinate) -> tuple[testing.Relation, testing.State]:
    """The principal's state once the subordinate's bag, as now written, reached it."""
    rel = dataclasses.replace(state.get_relations("rollingops")[0], remote_units_data={0: sub.bag})
    return rel, dataclasses.replace(state, relations={rel})


def shown(ctx: testing.Context[Principal], state: testing.State) -> tuple[str, int | None, bool]:
    """(status, position, is_waiting) as the principal sees them in its next hook of its own."""
    with ctx(ctx.on.update_status(), state) as manager:
        manager.run()
        view = manager.charm.rolling.state
        assert view is not None
        return view.status, view.position, manager.charm.rolling.is_waiting()


def requested(ctx: testing.Context[Principal]) -> tuple[Subordinate, testing.State, str]:
    """The subordinate published (idle), then the principal requested ``restart``."""
    return requested_as(ctx, "restart")


def requested_as(
    ctx: testing.Context[Principal], callback: str
) -> tuple[Subordinate, testing.State, str]:
    """The subordinate published (idle), then the principal requested ``callback``."""
    sub = Subordinate()
    rel, state = with_bag(testing.State(relations={relation()}), sub)
    state = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    state = ctx.run(ctx.on.action("restart", params={"callback": callback}), state)
    return sub, state, ctx.action_results["op"]


def granted(
    ctx: testing.Context[Principal], sub: Subordinate, state: testing.State
) -> tuple[testing.State, tuple[str, int | None, bool]]:
    """The grant's ``relation-changed``: the callback runs; what the principal sees after it."""
    rel, state = with_bag(state, sub)
    with ctx(ctx.on.relation_changed(rel, remote_unit=0), state) as manager:
        out = manager.run()
        view = manager.charm.rolling.state
        assert view is not None
        return out, (view.status, view.position, manager.charm.rolling.is_waiting())


def test_a_request_taken_but_not_republished_shows_waiting(ctx):
    sub, state, op_id = requested(ctx)
    assert shown(ctx, state) == ("waiting", None, True), "not taken yet"
    assert not sub.sync(written(state)), "taking a request is not actionable: no write"
    assert [op.id for op in sub.record.queue.pending] == [op_id]
    assert SubordinateBag.from_databag(sub.bag).state.status == "idle"
    assert shown(ctx, state) == ("waiting", None, True)


def test_released_in_the_grant_hook_is_neither_granted_nor_waiting(ctx):
    sub, state, _ = requested(ctx)
    sub.sync(written(state))
    assert sub.grant()
    state, after_callback = granted(ctx, sub, state)
    assert Principal.calls == [{}]
    assert after_callback == ("idle", None, False)
    assert not sub.sync(written(state)), "the result is applied by the worker, not published"
    sub.work()
    assert SubordinateBag.from_databag(sub.bag).granted is not None, "the bag still grants"
    assert sub.record.queue.current is None
    assert shown(ctx, state) == ("idle", None, False)


def test_retry_release_keeps_the_operation_waiting_until_released(ctx):
    Principal.outcome = "retry-release"
    sub, state, _ = requested(ctx)
    sub.sync(written(state))
    assert sub.grant()
    state, after_callback = granted(ctx, sub, state)
    assert after_callback == ("waiting", None, True)
    assert not sub.sync(written(state))
    sub.work()
    assert shown(ctx, state) == ("waiting", None, True)
    Principal.outcome = None
    assert sub.grant(), "attempt 2 is granted"
    state, after_callback = granted(ctx, sub, state)
    assert len(Principal.calls) == 2
    assert after_callback == ("idle", None, False)


def test_retry_hold_keeps_the_grant_until_released(ctx):
    Principal.outcome = "retry-hold"
    sub, state, _ = requested(ctx)
    sub.sync(written(state))
    assert sub.grant()
    state, after_callback = granted(ctx, sub, state)
    assert after_callback == ("granted", None, True)
    assert not sub.sync(written(state))
    sub.work()
    assert shown(ctx, state) == ("granted", None, True)
    Principal.outcome = None
    assert sub.hook(), "the worker fires the grant hook for attempt 2, same token"
    state, after_callback = granted(ctx, sub, state)
    assert len(Principal.calls) == 2
    assert after_callback == ("idle", None, False)


@pytest.mark.parametrize("outcome", ["lock-lost", "revoked"])
def test_a_lock_lost_or_revoked_while_running_is_announced(ctx, outcome):
    sub, state, op_id = requested(ctx)
    sub.sync(written(state))
    assert sub.grant()
    reason = f"{outcome}: force-released by the operator"
    assert sub.lose(outcome, reason), "an operation that ends other than done is published"
    rel, state = with_bag(state, sub)
    state = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    announced = [e for e in ctx.emitted_events if isinstance(e, LockLostEvent)]
    assert [(e.op_id, e.callback, e.reason) for e in announced] == [(op_id, "restart", reason)]
    assert Principal.calls == [], "the grant was gone when the principal looked"
    assert shown(ctx, state) == ("idle", None, False)


# -- grants the library refuses, and re-runs -----------------------------------------------------


@pytest.mark.parametrize("callback", ["restart", "reload"])
def test_a_grant_this_unit_never_requested_runs_nothing_and_is_released(ctx, caplog, callback):
    rel = relation(remote=sub(grant("intruder", callback=callback, wipe=True)))
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel}))
    assert Principal.calls == [], "neither the callback nor lock_granted"
    assert [(r.id, r.result) for r in results_of(out)] == [("intruder", "release")]
    assert "granted intruder" in caplog.text
    assert "this unit did not request it, or it is over: not run" in caplog.text


def test_a_grant_of_our_operation_for_another_callback_is_refused(ctx, caplog):
    rel = relation(remote=sub(grant("a", callback="fenced")))
    state = testing.State(relations={rel}, stored_states=asked(a="restart"))
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    assert Principal.calls == []
    assert [(r.id, r.result) for r in results_of(out)] == [("a", "release")]
    assert "this unit requested it for callback 'restart'" in caplog.text


def test_another_attempt_of_an_operation_answered_release_is_refused(ctx, caplog):
    rel = relation(remote=sub(grant("a")))
    state = testing.State(relations={rel}, stored_states=asked(a="restart"))
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    again = dataclasses.replace(
        out.get_relation(rel.id), remote_units_data={0: sub(grant("a", attempt=2))}
    )
    out = ctx.run(
        ctx.on.relation_changed(again, remote_unit=0),
        dataclasses.replace(out, relations={again}),
    )
    assert Principal.calls == [{}], "run once, for attempt 1"
    assert [(r.id, r.result, r.attempt) for r in results_of(out)] == [("a", "release", 2)]
    assert "this unit already answered it 'release'" in caplog.text


def test_a_refused_grant_ends_in_the_subordinate_and_the_lock_moves_on(ctx):
    """Through the subordinate's real code: an operation in its queue that this principal unit
    never requested (left from a relation since removed) is granted; the principal runs
    nothing, answers, and the subordinate ends it and grants the next one."""
    sub, state, op_id = requested(ctx)
    stale = Operation(id="stale-1", callback="restart", kwargs={"wipe": True}, requested_at=T0)
    sub._set(sub.record.queue.enqueue(stale))
    sub.sync(written(state))
    assert sub.grant()
    state, _ = granted(ctx, sub, state)
    assert Principal.calls == []
    sub.sync(written(state))
    sub.work()
    assert [(e.id, e.outcome) for e in sub.record.queue.history] == [("stale-1", Outcome.DONE)]
    assert sub.grant(), "the lock went on to the next operation"
    state, after = granted(ctx, sub, state)
    assert (Principal.calls, after) == ([{}], ("idle", None, False))
    assert sub.record.queue.current is not None
    assert sub.record.queue.current.operation.id == op_id


def test_a_rerun_after_the_subordinates_crash_is_told_to_the_callback(ctx):
    """The worker died while the callback ran: the principal's hook died with it (nothing
    stored); the restarted worker grants the same attempt again, marked ``rerun``. The callback
    runs again and is told; once this unit answered an attempt, a re-run of it runs nothing."""
    sub, state, _ = requested_as(ctx, "guarded")
    sub.sync(written(state))
    assert sub.grant()
    assert sub.regrant(), "the new token and the mark are published"
    state, after = granted(ctx, sub, state)
    assert Principal.calls == [{"rerun": True}]
    assert [(r.result, r.attempt) for r in results_of(state)] == [("release", 1)]
    assert after == ("idle", None, False)
    assert sub.regrant(), "killed again, before the result reached etcd"
    state, _ = granted(ctx, sub, state)
    assert len(Principal.calls) == 1, "this unit answered attempt 1 already: its answer stands"
    sub.sync(written(state))
    sub.work()
    assert [(e.outcome, e.attempts) for e in sub.record.queue.history] == [(Outcome.DONE, 1)]


def test_the_lock_granted_event_says_rerun(ctx):
    rel = relation(remote=sub(grant("b", callback="reload", rerun=True)))
    state = testing.State(relations={rel}, stored_states=asked(b="reload"))
    ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    assert Principal.calls == [{"event": "b", "token": 77, "rerun": True}]


def test_the_testing_kit_grants_a_rerun(ctx):
    rel = granted_relation("g", "guarded", {"n": 1}, rerun=True)
    state = testing.State(relations={rel}, stored_states=asked(g="guarded"))
    ctx.run(ctx.on.relation_changed(rel), state)
    assert Principal.calls == [{"rerun": True, "n": 1}]


def test_kwargs_cannot_shadow_the_rerun_flag_of_a_callback_that_takes_it(ctx):
    rel = relation()
    params = {"callback": "guarded", "kwargs": json.dumps({"rerun": False})}
    with pytest.raises(testing.errors.UncaughtCharmError, match="receives the re-run flag"):
        ctx.run(ctx.on.action("restart", params=params), testing.State(relations={rel}))
