"""Operator actions on ops.testing and a real etcd: structured results, clear failures."""

from __future__ import annotations

import dataclasses
import json

import pytest
from charm_helpers import (
    UNIT,
    peer,
    principal_relation,
    record_of,
    request,
    worker_hook,
)
from ops import testing
from test_protocol import changed, etcd_queue, finish, update_etcd_queue
from testbed.workers import settings_for

from rollingops.control import DomainControl
from rollingops.etcd_client import EtcdClient
from rollingops.lease import Lease
from rollingops.models import OperationResult, utcnow
from rollingops.semaphore import FairSemaphore
from rollingops.store import waiters_prefix


def hold_lock(client: EtcdClient, prefix: str, owner: str, ttl: int = 30) -> FairSemaphore:
    lease = Lease(client, ttl)
    semaphore = FairSemaphore(client, waiters_prefix(prefix), 1, lease, owner)
    semaphore.acquire(timeout=5)
    return semaphore


def test_lock_status_shows_holders_queue_and_health(ctx, supervisor, wired):
    supervisor.running = True
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    with EtcdClient(settings_for(wired.cluster)) as client:
        holder = hold_lock(client, wired.cluster.prefix, "other/3")
        waiter = FairSemaphore(
            client, waiters_prefix(wired.cluster.prefix), 1, Lease(client, 30), UNIT
        )
        client.put(waiter.key, UNIT.encode(), waiter._lease.id)
        ctx.run(ctx.on.action("lock-status"), out)
    results = ctx.action_results or {}
    assert results["backend"] == "etcd"
    assert results["etcd-reachable"] is True
    assert results["worker-running"] is True
    assert results["holders"] == {"1": {"unit": "other/3", "token": holder.token}}
    assert results["domain-queue"] == {"1": {"unit": UNIT}}, "a waiter has no token yet"
    assert results["queue"]["pending"] == {"1": {"op": "op1", "callback": "restart", "attempt": 0}}
    assert results["paused"] is False


def test_lock_status_without_etcd_names_the_peer_backend_its_holders_and_queue(ctx, supervisor):
    principal = principal_relation(requests=[request("op1"), request("op2", kwargs={"n": 2})])
    state = testing.State(leader=True, relations={peer(), principal})
    out = ctx.run(ctx.on.relation_changed(principal, remote_unit=0), state)
    out = ctx.run(ctx.on.update_status(), out)
    ctx.run(ctx.on.action("lock-status"), out)
    results = ctx.action_results or {}
    assert results["backend"] == "peer"
    assert results["holders"]["1"]["unit"] == UNIT
    assert results["holders"]["1"]["op"] == "op1"
    assert results["queue"]["pending"]["1"]["op"] == "op2"
    assert results["etcd-credentials"] == "none"


def test_history_reports_waited_held_and_outcome(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    update_etcd_queue(wired, lambda q: q.claim(5, utcnow()))
    finish(wired, OperationResult.RELEASE)
    out = ctx.run(ctx.on.update_status(), out)
    ctx.run(ctx.on.action("history", params={"count": 5}), out)
    results = ctx.action_results or {}
    entry = results["operations"]["1"]
    assert results["count"] == 1
    assert (entry["op"], entry["outcome"], entry["attempts"], entry["token"]) == (
        "op1",
        "done",
        1,
        5,
    )
    assert entry["waited"] > 0
    assert entry["held"] >= 0


def test_pause_stops_new_grants_until_resume(ctx, supervisor, wired):
    state = wired.state(peer(), leader=True)
    ctx.run(ctx.on.action("pause", params={"reason": "maintenance window"}), state)
    assert (ctx.action_results or {})["paused"] is True
    with EtcdClient(settings_for(wired.cluster)) as client:
        control = DomainControl(client, wired.cluster.prefix, 1)
        pause = control.paused()
        assert pause is not None
        assert (pause.reason, pause.by) == ("maintenance window", UNIT)
        ctx.run(ctx.on.action("resume"), state)
        assert control.paused() is None
    assert (ctx.action_results or {})["resumed"] is True


def test_force_release_revokes_the_holder_and_records_why(ctx, supervisor, wired):
    state = wired.state(peer(), leader=True)
    params = {"unit": "stuck/1", "reason": "hung restart"}
    with EtcdClient(settings_for(wired.cluster)) as client:
        stuck = hold_lock(client, wired.cluster.prefix, "stuck/1", ttl=3)
        token = stuck.token
        out = ctx.run(ctx.on.action("force-release", params=params), state)
        assert DomainControl(client, wired.cluster.prefix, 1).contenders() == []
        assert stuck._lease.lost.wait(10), "the stuck holder must learn it lost the lock"
        assert not stuck.is_held()
    assert (ctx.action_results or {})["released-tokens"] == str(token)
    (forced,) = record_of(out).forced
    assert (forced.unit, forced.tokens, forced.reason) == ("stuck/1", [token], "hung restart")


@pytest.mark.parametrize(
    ("action", "params", "message"),
    [
        ("force-release", {"unit": "nobody/0", "reason": "x"}, "nobody/0 holds no lock"),
        ("force-release", {"unit": "a/0", "reason": "  "}, "a reason is required"),
        ("pause", {"reason": " "}, "a reason is required"),
        ("pause", {"reason": "€" * 1025}, "a reason is at most 1024 characters (got 1025)"),
        ("run-exclusive", {"command": ""}, "command: the command must be a non-empty list"),
        ("run-exclusive", {"command": "echo 'unbalanced"}, "command: No closing quotation"),
    ],
)
def test_actions_fail_with_a_clear_message_and_change_nothing(
    ctx, supervisor, wired, action, params, message
):
    state = wired.state(peer(), leader=True)
    with pytest.raises(testing.ActionFailed) as failed:
        ctx.run(ctx.on.action(action, params=params), state)
    assert failed.value.message.startswith(message)
    assert etcd_queue(wired).pending == ()


def peer_leader_state(ctx, *requests: str) -> tuple[testing.State, testing.SubordinateRelation]:
    """A leader with no etcd after its own hooks: it decided peer and granted the first op."""
    principal = principal_relation(requests=[request(op, kwargs={"op": op}) for op in requests])
    state = testing.State(leader=True, relations={peer(), principal})
    out = ctx.run(ctx.on.start(), state)
    principal = out.get_relations("rollingops")[0]
    out = ctx.run(ctx.on.relation_changed(principal, remote_unit=0), out)
    return out, principal


def answer(
    ctx, out: testing.State, op: str, attempt: int, result: str = "release"
) -> testing.State:
    """The principal reports ``result`` for ``op`` (its relation-changed on our side)."""
    principal = out.get_relations("rollingops")[0]
    done = {"id": op, "result": result, "attempt": attempt, "finished-at": utcnow().isoformat()}
    data = {**principal.remote_unit_data, "requests": "", "results": json.dumps([done])}
    principal = dataclasses.replace(principal, remote_unit_data=data)
    out = dataclasses.replace(
        out, relations={*(r for r in out.relations if r.endpoint != "rollingops"), principal}
    )
    return ctx.run(ctx.on.relation_changed(principal, remote_unit=0), out)


def test_pause_under_peer_holds_new_grants_until_resume(ctx, supervisor):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    assert record_of(out).queue.current.operation.id == "op1"
    out = ctx.run(ctx.on.action("pause", params={"reason": "freeze"}), out)
    out = answer(ctx, out, "op1", 1)
    out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current is None, "paused: op2 is not granted"
    assert "paused by " in out.unit_status.message
    ctx.run(ctx.on.action("lock-status"), out)
    assert (ctx.action_results or {})["pause"]["reason"] == "freeze"
    out = ctx.run(ctx.on.action("resume"), out)
    assert (ctx.action_results or {})["resumed"] is True
    out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current.operation.id == "op2"


def test_force_release_under_peer_revokes_tells_the_principal_and_moves_on(ctx, supervisor):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    token = record_of(out).queue.current.token
    out = ctx.run(ctx.on.action("force-release", params={"unit": UNIT, "reason": "hung"}), out)
    assert (ctx.action_results or {})["released-tokens"] == str(token)
    out = ctx.run(ctx.on.update_status(), out)
    queue = record_of(out).queue
    assert [(e.id, e.outcome.value) for e in queue.history] == [("op1", "revoked")]
    assert queue.current is not None
    assert queue.current.operation.id == "op2"
    assert queue.current.token > token
    finished = json.loads(sub_bag_raw(out)["finished"])
    assert {"id": "op1", "outcome": "revoked"}.items() <= finished[0].items()


def test_peer_lock_actions_on_a_non_leader_say_to_use_the_leader(ctx, supervisor):
    out, _ = peer_leader_state(ctx, "op1")
    follower = dataclasses.replace(out, leader=False)
    for action, params in (
        ("pause", {"reason": "x"}),
        ("resume", {}),
        ("force-release", {"unit": UNIT, "reason": "x"}),
    ):
        with pytest.raises(testing.ActionFailed, match=r"run .* on the leader unit"):
            ctx.run(ctx.on.action(action, params=params), follower)


def test_lock_status_says_none_while_etcd_is_chosen_but_not_usable(ctx, supervisor, wired):
    unready = dataclasses.replace(wired.state(peer(), leader=False), secrets=set())
    ctx.run(ctx.on.action("lock-status"), unready)
    assert (ctx.action_results or {})["backend"] == "none"
    with pytest.raises(testing.ActionFailed, match="etcd is not usable yet"):
        ctx.run(ctx.on.action("run-exclusive", params={"command": "true"}), unready)


def test_run_exclusive_during_peer_fallback_runs_once_and_is_not_lost(ctx, supervisor, wired):
    wired.cluster.members[0].kill()
    out = ctx.run(worker_hook("rollingops_etcd_failed"), wired.state(peer(), leader=True))
    assert out.unit_status.message.startswith("peer fallback since ")
    out = ctx.run(ctx.on.action("run-exclusive", params={"command": "true"}), out)
    op = (ctx.action_results or {})["op"]
    wired.cluster.members[0].restart()
    for _ in range(4):  # the peer grants and runs it; the leader probes etcd and returns
        out = ctx.run(ctx.on.update_status(), out)
    record = record_of(out)
    assert [run.id for run in record.exclusive_runs] == [op]
    assert record.exclusive_runs[0].exit_code == 0
    assert [(e.id, e.outcome.value) for e in record.queue.history] == [(op, "done")]
    assert not out.unit_status.message.startswith("peer fallback"), out.unit_status
    assert op not in {o.id for o in etcd_queue(wired).pending}, "never run twice"


def test_cancel_drops_a_waiting_operation_and_tells_the_principal(ctx, supervisor, wired):
    principal = principal_relation(requests=[request("op1"), request("op2", kwargs={"n": 2})])
    out = changed(ctx, wired, principal)
    params = {"op": "op2", "reason": "not needed"}
    out = ctx.run(ctx.on.action("cancel", params=params), out)
    assert (ctx.action_results or {})["was"] == "waiting"
    queue = etcd_queue(wired)
    assert [op.id for op in queue.pending] == ["op1"]
    assert [(e.id, e.outcome.value) for e in queue.history] == [("op2", "cancelled")]
    finished = json.loads(out.get_relations("rollingops")[0].local_unit_data["finished"])
    assert finished == [
        {"id": "op2", "outcome": "cancelled", "attempts": 0, "reason": "cancelled: not needed"}
    ]


def test_cancel_frees_a_stuck_running_operation(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    update_etcd_queue(wired, lambda q: q.claim(5, utcnow()))
    out = ctx.run(ctx.on.update_status(), out)
    out = ctx.run(ctx.on.action("cancel", params={"op": "op1", "reason": "stuck"}), out)
    assert (ctx.action_results or {})["was"] == "running"
    assert etcd_queue(wired).current is None
    assert not out.unit_status.message.startswith("holding lock")


def test_cancel_of_an_unknown_operation_fails_and_changes_nothing(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    with pytest.raises(testing.ActionFailed, match="no operation 'nope'"):
        ctx.run(ctx.on.action("cancel", params={"op": "nope", "reason": "x"}), out)
    assert [op.id for op in etcd_queue(wired).pending] == ["op1"]


def sub_bag_raw(state: testing.State) -> dict[str, str]:
    return dict(state.get_relations("rollingops")[0].local_unit_data)
