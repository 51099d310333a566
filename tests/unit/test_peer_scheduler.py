"""The peer scheduler, driven by random interleavings (hypothesis) of a model cluster."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from rollingops.models import Operation, OperationResult, UnitQueue
from rollingops.peer_scheduler import PeerGrant, Revocation, published_queue, schedule

T0 = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)
UNITS = [f"app/{n}" for n in range(5)]


def holders(queues: dict[str, UnitQueue]) -> set[str]:
    """Units running an operation now: what the "at most k" invariant counts."""
    return {unit for unit, queue in queues.items() if queue.current is not None}


def op(op_id: str, at: int, max_retry: int | None = None) -> Operation:
    return Operation(
        id=op_id,
        callback="restart",
        kwargs={"id": op_id},
        max_retry=max_retry,
        requested_at=T0 + dt.timedelta(seconds=at),
    )


def test_running_operations_keep_their_slot_even_from_another_backend():
    running = UnitQueue().enqueue(op("a", 0)).claim(900, T0)  # granted under etcd, token 900
    queues = {"app/0": running, "app/1": UnitQueue().enqueue(op("b", 1))}
    result = schedule(queues, {}, capacity=1, next_token=1)
    assert result.grants == {"app/0": PeerGrant("app/0", "a", 900)}
    assert result.next_token == 901


def test_first_time_requests_before_retries_oldest_first():
    retry = UnitQueue().enqueue(op("r", 0)).claim(3, T0)
    retry = retry.report("r", OperationResult.RETRY_RELEASE).finish(T0)[0]
    queues = {
        "app/0": retry,
        "app/1": UnitQueue().enqueue(op("late", 5)),
        "app/2": UnitQueue().enqueue(op("early", 1)),
    }
    order = []
    grants: dict[str, PeerGrant] = {}
    token = 10
    for _ in range(3):
        result = schedule(queues, grants, capacity=1, next_token=token)
        (unit,) = set(result.grants) - set(grants) or set(result.grants)
        order.append(result.grants[unit].op_id)
        queues = {**queues, unit: UnitQueue()}
        grants, token = {}, result.next_token
    assert order == ["early", "late", "r"]


def test_a_retry_release_gives_the_lock_to_a_waiting_first_time_request():
    """From the state the leader really has: its own grant still published for the op that
    ran and came back to the head of its queue with ``retry-release``."""
    queues = {"app/0": UnitQueue().enqueue(op("r", 0)), "app/1": UnitQueue().enqueue(op("w", 1))}
    first = schedule(queues, {}, capacity=1, next_token=1)
    assert set(first.grants) == {"app/0"}
    ran = queues["app/0"].claim(first.grants["app/0"].token, T0)
    released = ran.report("r", OperationResult.RETRY_RELEASE).finish(T0)[0]
    assert released.pending[0].id == "r"  # back at the head, one attempt later
    queues = {**queues, "app/0": released}
    second = schedule(queues, first.grants, capacity=1, next_token=first.next_token)
    assert set(second.grants) == {"app/1"}
    assert second.grants["app/1"].token > first.grants["app/0"].token


def test_departed_units_lose_their_grant():
    queues = {"app/1": UnitQueue().enqueue(op("b", 1))}
    stale = {"app/0": PeerGrant("app/0", "a", 5)}
    result = schedule(queues, stale, capacity=1, next_token=6)
    assert result.grants == {"app/1": PeerGrant("app/1", "b", 6)}


actions = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.sampled_from(UNITS)),
        st.tuples(st.just("schedule"), st.just("")),
        st.tuples(st.just("claim"), st.sampled_from(UNITS)),
        st.tuples(
            st.just("report"), st.sampled_from(UNITS), st.sampled_from(list(OperationResult))
        ),
        st.tuples(st.just("leave"), st.sampled_from(UNITS)),
    ),
    max_size=80,
)


@settings(max_examples=500, deadline=None)
@given(actions=actions, capacity=st.integers(1, 3), max_retry=st.none() | st.integers(0, 2))
def test_never_more_than_k_run_and_nothing_is_lost(actions, capacity, max_retry):
    """The leader schedules on what units last published (``published_queue``: no claims)."""
    queues = {unit: UnitQueue() for unit in UNITS}
    published = dict(queues)
    grants: dict[str, PeerGrant] = {}
    token, clock = 1, 0
    requested: list[str] = []
    first_grants: list[str] = []
    completed: set[str] = set()

    def publish(unit: str) -> None:
        if unit in queues:
            published[unit] = published_queue(queues[unit], grants.get(unit), published[unit])

    def step(kind: str, unit: str = "", result: OperationResult | None = None) -> None:
        nonlocal grants, token, clock
        queue = queues.get(unit)
        if kind == "request" and queue is not None:
            clock += 1
            new = op(f"{unit.replace('/', '_')}-{clock}", clock, max_retry)
            queues[unit] = queue.enqueue(new)
            requested.append(new.id)
        elif kind == "schedule":
            result_ = schedule({u: published[u] for u in queues}, grants, capacity, token)
            for unit_, grant in result_.grants.items():
                if unit_ not in grants and queues[unit_].current is None:
                    assert grant.token >= token, "new grants take fresh, increasing tokens"
                    if queues[unit_].pending[0].attempt == 0:
                        first_grants.append(grant.op_id)
            grants, token = result_.grants, result_.next_token
        elif kind == "claim" and queue is not None and unit in grants and queue.current is None:
            grant = grants[unit]
            if queue.pending and queue.pending[0].id == grant.op_id:
                queues[unit] = queue.claim(grant.token, T0)
        elif kind == "report" and queue is not None and queue.current is not None:
            assert result is not None
            done = queue.report(queue.current.operation.id, result).finish(T0)[0]
            if len(done.history) != len(queue.history) or done.history != queue.history:
                completed.add(done.history[-1].id)
            queues[unit] = done
        elif kind == "leave" and queue is not None and len(queues) > 1:
            for pending in (*queue.pending, *([queue.current.operation] if queue.current else [])):
                requested.remove(pending.id)
            del queues[unit]
        publish(unit)
        assert len(holders(queues)) <= capacity, "more than k units run at once"

    for action in actions:
        step(*action)
    for _ in range(400):  # drain: everything requested runs or is dropped
        if not any(q.has_work for q in queues.values()):
            break
        step("schedule")
        for unit in list(queues):
            step("claim", unit)
            step("report", unit, OperationResult.RELEASE)
    assert not any(q.has_work for q in queues.values())
    assert set(requested) == completed, "every request ran to completion or was dropped"
    assert first_grants == sorted(first_grants, key=lambda i: int(i.split("-")[-1]))


def test_tokens_stay_above_standing_grants_when_next_token_is_lost():
    """A lost ``next-token`` (an unreadable bag) never hands out a token a grant still uses."""
    queues = {
        "app/0": UnitQueue().enqueue(op("a", 0)),
        "app/1": UnitQueue().enqueue(op("b", 1)),
    }
    standing = {"app/0": PeerGrant("app/0", "a", 50)}
    result = schedule(queues, standing, capacity=2, next_token=1)
    assert result.grants["app/1"].token > 50


def test_a_force_released_holder_whose_claim_is_unpublished_does_not_get_the_slot_back():
    stuck, waiting = UnitQueue().enqueue(op("a", 0)), UnitQueue().enqueue(op("b", 1))
    first = schedule({"app/0": stuck, "app/1": waiting}, {}, capacity=1, next_token=10)
    grant = first.grants["app/0"]
    claimed = stuck.claim(grant.token, T0)  # then app/0's machine freezes
    published = published_queue(claimed, grant, stuck)  # what the leader reads of app/0
    revocation = Revocation(grant.token, "hung", grant.op_id)  # LocalLock.force_release's
    after = schedule(
        {"app/0": published, "app/1": waiting},
        first.grants,
        capacity=1,
        next_token=first.next_token,
        revoked={"app/0": revocation},
    )
    assert set(after.grants) == {"app/1"}, "the revoked operation was granted again"
