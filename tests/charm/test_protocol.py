"""Protocol v1 with the principal, on ops.testing and a real etcd: requests in, grants out."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from charm_helpers import (
    UNIT,
    peer,
    principal_relation,
    record_of,
    request,
    stored,
    sub_bag,
    worker_hook,
)
from ops import testing
from testbed.workers import settings_for

from rollingops.etcd_client import EtcdClient
from rollingops.models import MAX_KWARGS_BYTES, OperationResult, UnitQueue, utcnow
from rollingops.store import OperationStore

HOSTILE = {
    "args": "--lease=1 'quoted' \"dq\" $(x); `y`\nline2",
    "unicode": "日本 ✓",
    "n": [1, None],
}


NOT_CREATED = "/run/rollingops-test-must-not-exist"


def etcd_queue(wired) -> UnitQueue:
    with EtcdClient(settings_for(wired.cluster)) as client:
        return OperationStore(client, wired.cluster.prefix, UNIT).load().queue


def update_etcd_queue(wired, change) -> None:
    with EtcdClient(settings_for(wired.cluster)) as client:
        OperationStore(client, wired.cluster.prefix, UNIT).update(change)


def finish(wired, result: OperationResult) -> None:
    """What the worker does with a reported result."""
    update_etcd_queue(wired, lambda q: q.report("op1", result).finish(utcnow())[0])


def changed(ctx, wired, principal, record=None, **kwargs: Any) -> testing.State:
    if record is not None:
        kwargs["stored_states"] = {stored(record)}
    state = wired.state(peer(), principal, leader=True, **kwargs)
    return ctx.run(ctx.on.relation_changed(principal, remote_unit=0), state)


def test_valid_request_is_queued_in_etcd_and_acknowledged(ctx, supervisor, wired):
    principal = principal_relation(requests=[request("op1", kwargs=HOSTILE)])
    out = changed(ctx, wired, principal)
    bag = sub_bag(out)
    assert bag["protocol"] == "1"
    assert bag["accepted"] == ["op1"]
    assert bag["state"]["status"] == "waiting"
    assert bag["state"]["backend"] == "etcd"
    assert bag["granted"] is None
    (queued,) = etcd_queue(wired).pending
    assert (queued.id, queued.kwargs) == ("op1", HOSTILE)
    assert record_of(out).queue.pending[0].id == "op1"


def test_a_request_is_taken_once_even_if_it_stays_in_the_bag(ctx, supervisor, wired):
    principal = principal_relation(requests=[request("op1")])
    out = changed(ctx, wired, principal)
    changed(ctx, wired, principal, record=record_of(out))
    assert [op.id for op in etcd_queue(wired).pending] == ["op1"]


@pytest.mark.parametrize(
    ("requests", "reason"),
    [
        ("not json", "requests is not JSON"),
        ('{"id": "x"}', "requests must be a JSON list"),
        ([{"id": "x", "requested-at": "2026-11-25T10:00:00Z"}], "callback: Field required"),
        ([request("has space")], "id: String should match pattern"),
        ([request("x", callback="rm -rf /")], "callback: String should match pattern"),
        ([request("x", kwargs={"big": "x" * MAX_KWARGS_BYTES})], "bytes, more than"),
        ([request("x", kwargs=["not", "an", "object"])], "kwargs: Input should be"),
        ([request("x", callback="run-exclusive")], "reserved for the operator"),
        ([request("x", **{"max-retry": -1})], "max-retry: Input should be greater"),
        ([request("x", unexpected=True)], "unexpected: Extra inputs are not permitted"),
    ],
)
def test_bad_requests_are_rejected_with_a_reason_and_lose_nothing(
    ctx, supervisor, wired, requests, reason
):
    good = principal_relation(requests=[request("keep", kwargs={"n": 1})])
    out = changed(ctx, wired, good)
    bad = principal_relation(
        requests=requests
        if isinstance(requests, str)
        else [*requests, request("also", kwargs={"n": 2})]
    )
    out = changed(ctx, wired, bad, record=record_of(out))
    bag = sub_bag(out)
    assert any(reason in r["reason"] for r in bag["rejected"]), bag["rejected"]
    expected = ["keep"] if isinstance(requests, str) else ["keep", "also"]
    assert [op.id for op in etcd_queue(wired).pending] == expected
    assert sorted(bag["accepted"]) == sorted(expected)


def test_a_request_identical_to_a_waiting_one_is_merged_and_reported(ctx, supervisor, wired):
    principal = principal_relation(requests=[request("first"), request("second")])
    bag = sub_bag(changed(ctx, wired, principal))
    assert bag["accepted"] == ["first"]
    assert bag["finished"] == [
        {
            "id": "second",
            "outcome": "merged",
            "attempts": 0,
            "reason": "identical to waiting operation first",
        }
    ]
    assert [op.id for op in etcd_queue(wired).pending] == ["first"]


def test_more_requests_than_allowed_are_rejected_beyond_the_limit(ctx, supervisor, wired):
    principal = principal_relation(
        requests=[request(f"op{n}", kwargs={"n": n}) for n in range(33)]
    )
    bag = sub_bag(changed(ctx, wired, principal))
    assert len(bag["accepted"]) == 32
    assert bag["rejected"] == [{"id": "op32", "reason": "more than 32 requests at once"}]


def test_requests_already_taken_do_not_count_towards_the_limit(ctx, supervisor, wired):
    """A principal that has not pruned yet still gets its new requests taken."""
    old = [request(f"old{n}", kwargs={"same": 1}) for n in range(31)]
    out = changed(ctx, wired, principal_relation(requests=old))
    assert sub_bag(out)["accepted"] == ["old0"]
    new = [request(f"new{n}", kwargs={"n": n}) for n in range(31)]
    out = changed(ctx, wired, principal_relation(requests=old + new), record=record_of(out))
    assert sub_bag(out)["rejected"] == []
    assert [op.id for op in etcd_queue(wired).pending] == ["old0"] + [r["id"] for r in new]


def test_grant_is_published_with_the_fencing_token(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1", kwargs={"a": 1})]))
    update_etcd_queue(wired, lambda q: q.claim(42, utcnow()))
    supervisor.running = True
    out = ctx.run(worker_hook("rollingops_lock_granted"), out)
    granted = sub_bag(out)["granted"]
    keys = ("id", "callback", "kwargs", "attempt", "token", "backend")
    assert {k: granted[k] for k in keys} == {
        "id": "op1",
        "callback": "restart",
        "kwargs": {"a": 1},
        "attempt": 1,
        "token": 42,
        "backend": "etcd",
    }
    assert out.unit_status.message.startswith("holding lock: restart (op op1, ")


def test_result_for_the_running_attempt_is_reported_to_etcd(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    update_etcd_queue(wired, lambda q: q.claim(42, utcnow()))
    result = {
        "id": "op1",
        "result": "retry-hold",
        "attempt": 1,
        "finished-at": "2026-11-25T10:01:00Z",
    }
    principal = principal_relation(requests=[request("op1")], results=[result])
    changed(ctx, wired, principal, record=record_of(out))
    current = etcd_queue(wired).current
    assert current is not None
    assert current.result is OperationResult.RETRY_HOLD


def test_a_result_for_an_earlier_attempt_is_not_applied(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    update_etcd_queue(wired, lambda q: q.claim(42, utcnow()))
    update_etcd_queue(
        wired, lambda q: q.report("op1", OperationResult.RETRY_HOLD).finish(utcnow())[0]
    )
    stale = {
        "id": "op1",
        "result": "retry-hold",
        "attempt": 1,
        "finished-at": "2026-11-25T10:01:00Z",
    }
    changed(ctx, wired, principal_relation(results=[stale]), record=record_of(out))
    current = etcd_queue(wired).current
    assert current is not None
    assert (current.operation.attempt, current.result) == (2, None)


def test_malformed_results_are_rejected_and_the_grant_stands(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    update_etcd_queue(wired, lambda q: q.claim(42, utcnow()))
    bad = [{"id": "op1", "result": "explode", "attempt": 1, "finished-at": "2026-11-25T10:01:00Z"}]
    out = changed(ctx, wired, principal_relation(results=bad), record=record_of(out))
    assert any(r["reason"].startswith("result: Input should be") for r in sub_bag(out)["rejected"])
    current = etcd_queue(wired).current
    assert current is not None
    assert current.result is None


def test_unreachable_etcd_leaves_requests_for_a_later_hook(ctx, supervisor, wired):
    principal = principal_relation(requests=[request("op1")])
    wired.cluster.members[0].kill()
    out = changed(ctx, wired, principal)
    assert "op1" not in record_of(out).seen
    assert sub_bag(out)["accepted"] == []


def test_done_operations_ride_along_with_the_next_grant(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    update_etcd_queue(wired, lambda q: q.claim(42, utcnow()))
    finish(wired, OperationResult.RELEASE)
    principal = principal_relation(requests=[request("op2", kwargs={"n": 2})])
    out = changed(ctx, wired, principal, record=record_of(out))
    update_etcd_queue(wired, lambda q: q.claim(43, utcnow()))
    out = ctx.run(worker_hook("rollingops_lock_granted"), out)
    bag = sub_bag(out)
    assert bag["granted"]["id"] == "op2"
    assert bag["finished"] == [{"id": "op1", "outcome": "done", "attempts": 1, "reason": ""}]
    assert bag["accepted"] == ["op2"]


def test_nothing_actionable_means_no_write_and_no_hook_for_the_principal(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    relation = out.get_relations("rollingops")[0]
    first = dict(relation.local_unit_data)
    more = principal_relation(requests=[request("op1"), request("op2", kwargs={"n": 2})])
    principal = dataclasses.replace(relation, remote_unit_data=more.remote_unit_data)
    out = changed(ctx, wired, principal, record=record_of(out))
    assert [op.id for op in etcd_queue(wired).pending] == ["op1", "op2"]
    assert dict(out.get_relations("rollingops")[0].local_unit_data) == first


def test_run_exclusive_runs_the_command_without_a_shell_when_granted(ctx, supervisor, wired):
    state = wired.state(peer(), leader=True)
    command = f"echo 'a b' ; touch {NOT_CREATED}"
    ctx.run(ctx.on.action("run-exclusive", params={"command": command}), state)
    (queued,) = etcd_queue(wired).pending
    assert queued.kwargs["argv"] == ["echo", "a b", ";", "touch", NOT_CREATED]
    update_etcd_queue(wired, lambda q: q.claim(7, utcnow()))
    out = ctx.run(worker_hook("rollingops_lock_granted"), state)
    (run,) = record_of(out).exclusive_runs
    assert (run.exit_code, run.output) == (0, f"a b ; touch {NOT_CREATED}\n")
    assert not Path(NOT_CREATED).exists()
    current = etcd_queue(wired).current
    assert current is not None
    assert current.result is OperationResult.RELEASE


def test_failing_exclusive_command_asks_for_a_retry(ctx, supervisor, wired):
    state = wired.state(peer(), leader=True)
    ctx.run(ctx.on.action("run-exclusive", params={"command": "false"}), state)
    update_etcd_queue(wired, lambda q: q.claim(7, utcnow()))
    out = ctx.run(worker_hook("rollingops_lock_granted"), state)
    assert record_of(out).exclusive_runs[0].exit_code == 1
    current = etcd_queue(wired).current
    assert current is not None
    assert current.result is OperationResult.RETRY_RELEASE


def test_a_peer_grant_says_it_came_from_the_peer_backend(ctx, supervisor):
    principal = principal_relation(requests=[request("op1")])
    state = testing.State(leader=True, relations={peer(), principal})
    out = ctx.run(ctx.on.relation_changed(principal, remote_unit=0), state)
    out = ctx.run(ctx.on.update_status(), out)
    granted = sub_bag(out)["granted"]
    assert (granted["id"], granted["backend"]) == ("op1", "peer")
