"""A principal that writes hostile or careless data: every case ends in a rejection with a
reason in the subordinate's bag, never in an exception out of a hook (issue 9).

Driven through real hooks with ops.testing; the etcd cases use a real test-bed etcd.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from charm_helpers import (
    peer,
    principal_relation,
    record_of,
    request,
    stored,
    sub_bag,
    unit_context,
    worker_hook,
)
from ops import testing
from test_protocol import changed, etcd_queue, update_etcd_queue

from rollingops.models import OperationResult, utcnow

NAIVE = "2026-11-25T10:00:00"


def no_etcd(ctx, principal: testing.SubordinateRelation, **kwargs: Any) -> testing.State:
    """One relation-changed from the principal on a leader without etcd (peer backend)."""
    state = testing.State(leader=True, relations={peer(), principal}, **kwargs)
    return ctx.run(ctx.on.relation_changed(principal, remote_unit=0), state)


def reasons(state: testing.State) -> list[str]:
    return [r["reason"] for r in sub_bag(state)["rejected"]]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


def deep_json(depth: int) -> str:
    """``json.dumps`` of ``nested(depth)`` without json's own recursion."""
    return '{"k": ' * depth + "1" + "}" * depth


# -- 2. untrusted JSON: depth, size, numbers ----------------------------------------------------


def test_kwargs_3000_levels_deep_are_rejected_not_a_crash(ctx, supervisor):
    deep = f'[{{"id": "deep", "callback": "restart", "kwargs": {deep_json(3000)}, "requested-at": "2026-11-25T10:00:00Z"}}]'  # noqa: E501
    out = no_etcd(ctx, principal_relation(requests=deep))
    assert reasons(out) == ["requests nested deeper than 64"]
    assert record_of(out).queue.pending == ()


def test_100k_nested_arrays_are_rejected_not_a_crash(ctx, supervisor, wired):
    principal = principal_relation(requests="[" * 100_000, results="[" * 3000)
    out = changed(ctx, wired, principal)
    assert reasons(out) == ["requests nested deeper than 64", "results nested deeper than 64"]
    # Nothing is lost or stuck: the next, sane bag is taken as usual.
    out = changed(ctx, wired, principal_relation(requests=[request("ok")]), record=record_of(out))
    assert [op.id for op in etcd_queue(wired).pending] == ["ok"]


def test_an_oversized_results_field_is_rejected_whole(ctx, supervisor):
    results = [
        {"id": f"r{n}", "result": "release", "attempt": 1, "finished-at": "2026-11-25T10:00:00Z"}
        for n in range(1000)
    ]
    out = no_etcd(ctx, principal_relation(results=results))
    assert reasons(out) == ["results field is 88 KiB, over 64 KiB"]


def test_kwargs_a_little_too_deep_reject_that_request_only(ctx, supervisor):
    principal = principal_relation(
        requests=[request("deep", kwargs=nested(33)), request("ok", kwargs={"n": 1})]
    )
    out = no_etcd(ctx, principal)
    assert sub_bag(out)["rejected"] == [
        {"id": "deep", "reason": "kwargs: Value error, kwargs nested deeper than 32"}
    ]
    assert [op.id for op in record_of(out).queue.pending] == ["ok"]


def test_an_oversized_requests_field_is_rejected_whole(ctx, supervisor):
    filler = "x" * 4096
    many = [request(f"r{n}", kwargs={"f": filler, "n": n}) for n in range(800)]
    out = no_etcd(ctx, principal_relation(requests=many))
    (reason,) = reasons(out)
    assert reason.startswith("requests field is ")
    assert reason.endswith(" KiB")
    assert "over 3104 KiB" in reason
    assert record_of(out).queue.pending == ()


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("Infinity", "requests is not JSON: Infinity is not a JSON number"),
        ("-Infinity", "requests is not JSON: -Infinity is not a JSON number"),
        ("NaN", "requests is not JSON: NaN is not a JSON number"),
        ("1e999", "requests: number 1e999 is out of range"),
        ("9" * 5000, "requests: integer of 5000 digits, more than 4300"),
    ],
)
def test_numbers_json_cannot_carry_are_refused_not_nulled(ctx, supervisor, number, reason):
    raw = (
        '[{"id": "inf", "callback": "restart", "kwargs": {"x": '
        + number
        + '}, "requested-at": "2026-11-25T10:00:00Z"}]'
    )
    out = no_etcd(ctx, principal_relation(requests=raw))
    assert reasons(out) == [reason]
    assert record_of(out).queue.pending == ()


# -- 1. timestamps without a timezone ------------------------------------------------------------


def test_a_naive_requested_at_is_rejected_and_history_still_works(ctx, supervisor, wired):
    principal = principal_relation(requests=[request("naive", **{"requested-at": NAIVE})])
    out = changed(ctx, wired, principal)
    # What the worker would do with anything queued: grant it, and it is released.
    if etcd_queue(wired).pending:
        update_etcd_queue(wired, lambda q: q.claim(5, utcnow()))
        update_etcd_queue(
            wired, lambda q: q.report("naive", OperationResult.RELEASE).finish(utcnow())[0]
        )
        out = ctx.run(ctx.on.update_status(), out)
    ctx.run(ctx.on.action("history", params={"count": 5}), out)
    assert (ctx.action_results or {})["count"] == 0
    assert sub_bag(out)["rejected"] == [
        {"id": "naive", "reason": "requested-at: Input should have timezone info"}
    ]


def test_a_naive_finished_at_is_rejected_and_the_grant_stands(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    update_etcd_queue(wired, lambda q: q.claim(42, utcnow()))
    result = {"id": "op1", "result": "release", "attempt": 1, "finished-at": NAIVE}
    out = changed(ctx, wired, principal_relation(results=[result]), record=record_of(out))
    assert {"id": "op1", "reason": "finished-at: Input should have timezone info"} in sub_bag(out)[
        "rejected"
    ]
    current = etcd_queue(wired).current
    assert current is not None
    assert current.result is None


def test_a_naive_request_cannot_crash_the_peer_leader(ctx, supervisor, tmp_path):
    """Two units under the peer backend: one waits (aware), the leader's principal asks naive."""
    leader = ctx.run(ctx.on.install(), testing.State(leader=True, relations={peer()}))
    decision = dict(leader.get_relations("cluster")[0].local_app_data)
    # Unit 1 takes an ordinary request and publishes its queue, as the charm does.
    other = principal_relation(requests=[request("theirs")])
    cluster = peer(local_app_data=decision, peers_data={0: {}})
    state = testing.State(leader=False, relations={cluster, other})
    second = unit_context(tmp_path / "charm-1", 1)
    out = second.run(second.on.relation_changed(other, remote_unit=0), state)
    published = dict(out.get_relations("cluster")[0].local_unit_data)
    assert json.loads(published["queue"])["pending"][0]["id"] == "theirs"
    # The leader's own principal writes a timestamp without a timezone.
    cluster = dataclasses.replace(leader.get_relations("cluster")[0], peers_data={1: published})
    principal = principal_relation(requests=[request("mine", **{"requested-at": NAIVE})])
    state = dataclasses.replace(leader, relations={cluster, principal})
    out = ctx.run(ctx.on.relation_changed(principal, remote_unit=0), state)
    assert reasons(out) == ["requested-at: Input should have timezone info"]
    grants = json.loads(out.get_relations("cluster")[0].local_app_data["grants"])
    assert grants["rollingops/1"]["op-id"] == "theirs"


# -- 3. a request is never taken twice while it is in the principal's bag -----------------------


def test_a_finished_request_left_in_the_bag_never_runs_again_after_300_others(
    ctx, supervisor, wired
):
    old = request("old", kwargs={"first": True})
    out = changed(ctx, wired, principal_relation(requests=[old]))
    update_etcd_queue(wired, lambda q: q.claim(1, utcnow()))
    update_etcd_queue(
        wired, lambda q: q.report("old", OperationResult.RELEASE).finish(utcnow())[0]
    )
    # 310 more requests, 31 per hook, pruned once taken; "old" stays in the bag throughout.
    # They are identical, so all but the first merge into one waiting operation.
    for batch in range(10):
        fresh = [request(f"new-{batch}-{n}", kwargs={"same": 1}) for n in range(31)]
        out = changed(
            ctx, wired, principal_relation(requests=[old, *fresh]), record=record_of(out)
        )
        assert not sub_bag(out)["rejected"], sub_bag(out)["rejected"]
    out = changed(ctx, wired, principal_relation(requests=[old]), record=record_of(out))
    assert [op.id for op in etcd_queue(wired).pending] == ["new-0-0"]
    assert "old" in record_of(out).seen


def test_ids_the_principal_pruned_are_forgotten(ctx, supervisor):
    out = no_etcd(ctx, principal_relation(requests=[request("a"), request("b", kwargs={"n": 1})]))
    assert set(record_of(out).seen) == {"a", "b"}
    out = no_etcd(
        ctx,
        principal_relation(requests=[request("b", kwargs={"n": 1})]),
        stored_states={stored(record_of(out))},
    )
    assert record_of(out).seen == ("b",)


def test_an_unreadable_requests_field_forgets_nothing(ctx, supervisor):
    out = no_etcd(ctx, principal_relation(requests=[request("a")]))
    out = no_etcd(
        ctx, principal_relation(requests="[" * 100), stored_states={stored(record_of(out))}
    )
    assert record_of(out).seen == ("a",)


# -- 4. results only for the principal's own operations ------------------------------------------


def test_the_principal_cannot_finish_the_operators_run_exclusive(ctx, supervisor, wired):
    state = wired.state(peer(), leader=True)
    out = ctx.run(ctx.on.action("run-exclusive", params={"command": "echo ran"}), state)
    op_id = (ctx.action_results or {})["op"]
    update_etcd_queue(wired, lambda q: q.claim(7, utcnow()))
    forged = {"id": op_id, "result": "release", "attempt": 1, "finished-at": utcnow().isoformat()}
    out = changed(ctx, wired, principal_relation(results=[forged]), record=record_of(out))
    assert sub_bag(out)["rejected"] == [
        {"id": op_id, "reason": f"result for {op_id}: not an operation this principal requested"}
    ]
    assert op_id not in sub_bag(out)["accepted"]
    current = etcd_queue(wired).current
    assert current is not None
    assert current.result is None
    supervisor.running = True
    out = ctx.run(worker_hook("rollingops_lock_granted"), out)
    (run,) = record_of(out).exclusive_runs
    assert (run.id, run.output) == (op_id, "ran\n")


# -- 5. reasons survive, and no silent coercion -------------------------------------------------


def test_a_rejection_keeps_its_reason_whatever_the_key_length(ctx, supervisor):
    key = "k" * 300
    out = no_etcd(ctx, principal_relation(requests=[request("x", **{key: 1})]))
    (reason,) = reasons(out)
    assert reason.endswith(": Extra inputs are not permitted")
    assert reason.startswith("kkk")
    assert len(reason) < 200


@pytest.mark.parametrize("value", ["5", True, 5.0])
def test_max_retry_must_be_a_json_integer(ctx, supervisor, value):
    out = no_etcd(ctx, principal_relation(requests=[request("x", **{"max-retry": value})]))
    assert sub_bag(out)["rejected"] == [
        {"id": "x", "reason": "max-retry: Input should be a valid integer"}
    ]
    assert record_of(out).queue.pending == ()
