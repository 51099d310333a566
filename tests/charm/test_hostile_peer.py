"""Attacks on the one lock backend: a hostile operator, a corrupt peer databag, another unit
whose bag lies, and hooks that run out of order.

Every state starts from what the real hooks produce (``peer_leader_state``); the test then
tampers with one thing. A hook must never raise, an action must fail with a clear message or do
the right thing, nothing queued may be lost and the status must never claim something false.
Each attack once broke something (a hook failing, a pause failing open, tokens falling); the
tests now hold the fixes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from charm_helpers import (
    UNIT,
    peer,
    principal_relation,
    record_of,
    request,
    stored,
    unit_context,
    worker_hook,
)
from ops import testing
from test_actions import answer, hold_lock, peer_leader_state
from test_protocol import changed, etcd_queue
from testbed.workers import settings_for

from rollingops.control import DomainControl
from rollingops.etcd_client import EtcdClient
from rollingops.lease import Lease
from rollingops.semaphore import FairSemaphore
from rollingops.store import waiters_prefix

OTHER = "rollingops/1"


# -- helpers -------------------------------------------------------------------------------------


def cluster_of(state: testing.State) -> testing.PeerRelation:
    return state.get_relations("cluster")[0]  # type: ignore[return-value]


def tamper(
    state: testing.State,
    app: dict[str, str] | None = None,
    unit: dict[str, str] | None = None,
    peers: dict[int, dict[str, str]] | None = None,
) -> testing.State:
    """``state`` with the peer relation's bags overwritten key by key (None leaves a bag)."""
    rel = cluster_of(state)
    new = dataclasses.replace(
        rel,
        local_app_data={**rel.local_app_data, **(app or {})},
        local_unit_data={**rel.local_unit_data, **(unit or {})},
        peers_data={**rel.peers_data, **(peers or {})},
    )
    others = {r for r in state.relations if r.endpoint != "cluster"}
    return dataclasses.replace(state, relations={*others, new})


def app_bag(state: testing.State) -> dict[str, str]:
    return dict(cluster_of(state).local_app_data)


def every_hook(ctx, state: testing.State) -> testing.State:
    """Run each hook and read-only action a unit may see; none may raise. Returns the state
    after the state-changing hooks."""
    out = ctx.run(ctx.on.update_status(), state)
    out = ctx.run(ctx.on.relation_created(cluster_of(out)), out)
    out = ctx.run(worker_hook("rollingops_queue_changed"), out)
    out = ctx.run(worker_hook("rollingops_lock_granted"), out)
    out = ctx.run(ctx.on.leader_elected(), out)
    ctx.run(ctx.on.action("lock-status"), out)
    ctx.run(ctx.on.action("history", params={"count": 5}), out)
    return out


def known_ops(state: testing.State) -> set[str]:
    """Every operation id the unit still knows of: waiting, running or finished."""
    queue = record_of(state).queue
    ids = {op.id for op in queue.pending} | {e.id for e in queue.history}
    return ids | ({queue.current.operation.id} if queue.current else set())


def deep(depth: int) -> str:
    return '{"k": ' * depth + "1" + "}" * depth


def second_unit(ctx, tmp_path, leader: testing.State, requests: list[str]) -> dict[str, str]:
    """``rollingops/1`` after its own hook under the leader's decision: its published bag."""
    other = principal_relation(requests=[request(op, kwargs={"op": op}) for op in requests])
    cluster = peer(local_app_data=app_bag(leader), peers_data={0: {}})
    state = testing.State(leader=False, relations={cluster, other})
    second = unit_context(tmp_path / "charm-1", 1)
    out = second.run(second.on.relation_changed(other, remote_unit=0), state)
    return dict(cluster_of(out).local_unit_data)


# -- 1. garbage in the peer application bag: no hook raises, nothing queued is lost -------------

GARBAGE = {
    "empty-object": "{}",
    "list": "[1, 2]",
    "string": '"peer"',
    "number": "5",
    "null": "null",
    "not-json": "{{{",
    "deep-object": deep(5000),
    "deep-array": "[" * 100_000,
    "one-megabyte": "x" * 1_000_000,
    "huge-int": "9" * 5000,
    "negative": "-7",
    "grant-not-a-map": json.dumps({UNIT: 5}),
    "grant-wrong-types": json.dumps({UNIT: {"op-id": ["x"], "token": "abc", "attempt": []}}),
    "token-infinity": '{"rollingops/0": {"op-id": "op1", "token": Infinity, "reason": "x"}}',
    "token-nan": '{"rollingops/0": {"op-id": "op1", "token": NaN, "reason": "x"}}',
    "token-float": json.dumps({UNIT: {"op-id": "op1", "token": 1e300, "reason": "x"}}),
    "not-a-unit": json.dumps({"../../etc": {"op-id": "op1", "token": 3, "reason": "x"}}),
}


def _garbage_cases() -> list[Any]:
    return [
        pytest.param(key, value, id=f"{key}-{name}")
        for key in ("backend", "grants", "next-token", "pause", "revoked")
        for name, value in GARBAGE.items()
    ]


@pytest.mark.parametrize(("key", "value"), _garbage_cases())
def test_garbage_in_the_peer_app_bag_never_fails_a_hook_nor_loses_an_op(
    ctx, supervisor, key, value
):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    assert record_of(out).queue.current is not None
    out = every_hook(ctx, tamper(out, app={key: value}))
    assert known_ops(out) == {"op1", "op2"}
    # The leader rewrites what it owns; the next answer moves the queue on.
    out = answer(ctx, out, "op1", 1)
    out = ctx.run(ctx.on.update_status(), out)
    if key == "pause":  # an unreadable pause is a pause (fails safe) until resumed
        assert record_of(out).queue.current is None
        assert "paused by unknown: the pause in the peer relation is unreadable" in str(
            out.unit_status.message
        )
        out = ctx.run(ctx.on.action("resume"), out)
        out = ctx.run(ctx.on.update_status(), out)
    queue = record_of(out).queue
    assert queue.current is not None
    assert queue.current.operation.id == "op2"


# -- 2. another unit's bag lies ----------------------------------------------------------------


def test_a_superscript_queue_epoch_is_ignored_like_any_unreadable_value(ctx, supervisor, tmp_path):
    out, _ = peer_leader_state(ctx, "op1")
    theirs = second_unit(ctx, tmp_path, out, ["theirs"])
    every_hook(ctx, tamper(out, peers={1: {**theirs, "queue-epoch": "\u00b2"}}))


def _naive(published: dict[str, str]) -> dict[str, str]:
    queue = json.loads(published["queue"])
    for op in queue["pending"]:
        op["requested-at"] = "2026-11-25T10:00:00"
    return {**published, "queue": json.dumps(queue)}


def test_a_peer_queue_with_naive_timestamps_cannot_crash_the_leader(ctx, supervisor, tmp_path):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    theirs = _naive(second_unit(ctx, tmp_path, out, ["theirs"]))
    out = tamper(out, peers={1: theirs})
    out = answer(ctx, out, "op1", 1)  # op2 and theirs now both wait: sorted together
    every_hook(ctx, out)


@pytest.mark.parametrize(
    "queue", ["x" * 1_000_000, deep(5000), "[" * 100_000, '{"pending": 5}', "null"]
)
def test_an_unreadable_peer_queue_is_ignored(ctx, supervisor, tmp_path, queue):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    theirs = second_unit(ctx, tmp_path, out, ["theirs"])
    out = every_hook(ctx, tamper(out, peers={1: {**theirs, "queue": queue}}))
    assert known_ops(out) == {"op1", "op2"}


def test_a_peer_forging_a_running_op_is_force_released_and_frees_the_slot(
    ctx, supervisor, tmp_path
):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    theirs = second_unit(ctx, tmp_path, out, ["theirs"])
    queue = json.loads(theirs["queue"])
    op = queue["pending"].pop(0)
    queue["current"] = {"operation": op, "token": 7, "granted-at": op["requested-at"]}
    out = tamper(out, peers={1: {**theirs, "queue": json.dumps(queue)}})
    out = answer(ctx, out, "op1", 1)
    out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current is None, "capacity 1: the forged run holds the slot"
    params = {"unit": OTHER, "reason": "forged"}
    out = ctx.run(ctx.on.action("force-release", params=params), out)
    assert (ctx.action_results or {})["released-tokens"] == "7"
    out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current.operation.id == "op2"


def test_a_revocation_naming_another_token_leaves_the_running_op_alone(ctx, supervisor):
    out, _ = peer_leader_state(ctx, "op1")
    token = record_of(out).queue.current.token
    fake = {UNIT: {"token": token + 1, "reason": "x"}, "ghost/9": {"token": 1, "reason": "y"}}
    out = every_hook(ctx, tamper(out, app={"revoked": json.dumps(fake)}))
    queue = record_of(out).queue
    assert queue.current is not None
    assert queue.current.token == token
    assert queue.history == ()
    assert app_bag(out).get("revoked", "") == "", "stale revocations are dropped by the leader"


def test_a_grant_for_a_unit_that_is_not_a_unit_holds_no_slot(ctx, supervisor):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    grants = json.loads(app_bag(out)["grants"])
    grants["ghost/7"] = {"op-id": "x", "token": 2**41, "attempt": 0}
    out = answer(ctx, tamper(out, app={"grants": json.dumps(grants)}), "op1", 1)
    out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current.operation.id == "op2"
    ctx.run(ctx.on.action("lock-status"), out)
    holders = (ctx.action_results or {})["holders"]
    assert [h["unit"] for h in holders.values()] == [UNIT]


def _waiting_op2(ctx) -> testing.State:
    """The leader after op1 finished, op2 waiting ungranted (paused), then resumed in the bag."""
    out, _ = peer_leader_state(ctx, "op1", "op2")
    out = ctx.run(ctx.on.action("pause", params={"reason": "hold"}), out)
    out = answer(ctx, out, "op1", 1)
    assert record_of(out).queue.current is None
    return tamper(out, app={"pause": ""})


@pytest.mark.parametrize("token", [0, -5])
def test_a_grant_with_a_token_below_one_is_not_claimed(ctx, supervisor, token):
    out = _waiting_op2(ctx)
    grants = {UNIT: {"op-id": "op2", "token": token, "attempt": 0}}
    every_hook(ctx, tamper(out, app={"grants": json.dumps(grants)}))


def test_a_grant_with_a_stale_token_is_not_claimed(ctx, supervisor):
    out = _waiting_op2(ctx)
    highest = record_of(out).queue.highest_token
    grants = {UNIT: {"op-id": "op2", "token": 1, "attempt": 0}}
    out = ctx.run(ctx.on.update_status(), tamper(out, app={"grants": json.dumps(grants)}))
    current = record_of(out).queue.current
    assert current is None or current.token > highest


def test_an_unreadable_pause_does_not_lift_the_pause(ctx, supervisor):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    out = ctx.run(ctx.on.action("pause", params={"reason": "freeze"}), out)
    out = tamper(out, app={"pause": '{"reason": "freeze"}'})
    out = answer(ctx, out, "op1", 1)
    out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current is None, "op2 granted while paused"


@pytest.mark.parametrize(
    "epoch",
    [
        pytest.param(
            -1,
        ),
        10**30,
    ],
)
def test_an_odd_epoch_does_not_stop_grants_forever(ctx, supervisor, epoch):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    decision = json.loads(app_bag(out)["backend"]) | {"epoch": epoch}
    out = tamper(out, app={"backend": json.dumps(decision)})
    out = answer(ctx, out, "op1", 1)
    for _ in range(3):
        out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current is not None
    assert record_of(out).queue.current.operation.id == "op2"


# -- 3. a hostile or careless operator -------------------------------------------------------


def test_cancel_of_the_running_op_under_peer_while_its_grant_stands(ctx, supervisor):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    assert json.loads(app_bag(out)["grants"])[UNIT]["op-id"] == "op1"
    out = ctx.run(ctx.on.action("cancel", params={"op": "op1", "reason": "stuck"}), out)
    assert (ctx.action_results or {})["was"] == "running"
    out = ctx.run(ctx.on.update_status(), out)
    queue = record_of(out).queue
    assert queue.current is not None
    assert queue.current.operation.id == "op2"
    assert [(e.id, e.outcome.value) for e in queue.history] == [("op1", "cancelled")]
    # The principal's late answer for op1 changes nothing.
    out = answer(ctx, out, "op1", 1)
    queue = record_of(out).queue
    assert queue.current.operation.id == "op2"
    assert [(e.id, e.outcome.value) for e in queue.history] == [("op1", "cancelled")]


@pytest.mark.parametrize("unit", ["nobody/0", "", "rollingops/0/../1", UNIT])
def test_force_release_under_peer_of_a_unit_that_holds_nothing(ctx, supervisor, unit):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    out = ctx.run(ctx.on.action("pause", params={"reason": "hold"}), out)
    out = ctx.run(ctx.on.action("cancel", params={"op": "op1", "reason": "x"}), out)
    out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current is None  # op2 only waits
    params = {"unit": unit, "reason": "x"}
    with pytest.raises(testing.ActionFailed, match="holds no lock"):
        ctx.run(ctx.on.action("force-release", params=params), out)
    assert [op.id for op in record_of(out).queue.pending] == ["op2"]


def test_force_release_under_peer_frees_a_grant_its_unit_never_claims(ctx, supervisor, tmp_path):
    leader = ctx.run(ctx.on.install(), testing.State(leader=True, relations={peer()}))
    theirs = second_unit(ctx, tmp_path, leader, ["theirs"])
    out = ctx.run(ctx.on.update_status(), tamper(leader, peers={1: theirs}))
    assert json.loads(app_bag(out)["grants"])[OTHER]["op-id"] == "theirs"
    ctx.run(ctx.on.action("lock-status"), out)
    assert (ctx.action_results or {})["holders"]["1"]["unit"] == OTHER
    ctx.run(ctx.on.action("force-release", params={"unit": OTHER, "reason": "dead machine"}), out)


def test_pause_survives_a_leader_change_and_the_new_leader_resumes(ctx, supervisor):
    out, _ = peer_leader_state(ctx, "op1", "op2")
    follower = dataclasses.replace(out, leader=False)
    with pytest.raises(testing.ActionFailed, match="on the leader unit"):
        ctx.run(ctx.on.action("pause", params={"reason": "x"}), follower)
    out = ctx.run(ctx.on.action("pause", params={"reason": "freeze"}), out)
    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, leader=False))
    out = ctx.run(ctx.on.leader_elected(), dataclasses.replace(out, leader=True))
    out = answer(ctx, out, "op1", 1)
    assert record_of(out).queue.current is None
    assert "paused by rollingops/0: freeze" in out.unit_status.message
    out = ctx.run(ctx.on.action("resume"), out)
    assert (ctx.action_results or {})["resumed"] is True
    out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current.operation.id == "op2"


def test_run_exclusive_with_a_corrupt_record_fails_and_leaves_it_alone(ctx, supervisor):
    state = testing.State(leader=True, relations={peer()}, stored_states={stored("{corrupt")})
    with pytest.raises(testing.ActionFailed, match="unit record is unreadable"):
        ctx.run(ctx.on.action("run-exclusive", params={"command": "true"}), state)
    out = every_hook(ctx, state)
    raw = out.get_stored_state("_stored", owner_path="RollingOpsCharm").content["record"]
    assert raw == "{corrupt"
    assert out.unit_status.name == "blocked"


def test_run_exclusive_with_max_retry_over_the_limit_fails_clearly(ctx, supervisor):
    out, _ = peer_leader_state(ctx, "op1")
    params = {"command": "true", "max-retry": 5000}
    with pytest.raises(testing.ActionFailed, match="max-retry"):
        ctx.run(ctx.on.action("run-exclusive", params=params), out)


@pytest.mark.parametrize("timeout", [0, -1])
def test_run_exclusive_with_a_non_positive_timeout_is_refused(ctx, supervisor, timeout):
    out, _ = peer_leader_state(ctx, "op1")
    params = {"command": "true", "timeout": timeout}
    with pytest.raises(testing.ActionFailed, match="timeout"):
        ctx.run(ctx.on.action("run-exclusive", params=params), out)


# -- 4. hooks out of order ---------------------------------------------------------------------


def test_worker_hooks_without_peer_relation_nor_etcd_take_nothing_and_lose_nothing(
    ctx, supervisor
):
    principal = principal_relation(requests=[request("op1")])
    state = testing.State(leader=True, relations={principal})
    for hook in ("rollingops_queue_changed", "rollingops_lock_granted", "rollingops_etcd_failed"):
        state = ctx.run(worker_hook(hook), state)
    assert record_of(state).queue.pending == ()
    assert "op1" not in (
        state.get_relations("rollingops")[0].local_unit_data.get("accepted") or ""
    )
    assert state.unit_status.name == "blocked"
    # The peer relation arrives: op1 is taken and granted under peer.
    state = dataclasses.replace(state, relations={*state.relations, peer()})
    out = ctx.run(ctx.on.relation_created(cluster_of(state)), state)
    out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).queue.current.operation.id == "op1"


# -- 5. under etcd: unreachable members, switches, waiters -------------------------------------


def fallen_back(ctx, wired) -> testing.State:
    """The leader after etcd's only member died and its worker gave up: peer fallback."""
    wired.cluster.members[0].kill()
    out = ctx.run(worker_hook("rollingops_etcd_failed"), wired.state(peer(), leader=True))
    assert out.unit_status.message.startswith("peer fallback since ")
    return out


def back_on_etcd(ctx, wired, out: testing.State) -> testing.State:
    wired.cluster.members[0].restart()
    for _ in range(4):
        out = ctx.run(ctx.on.update_status(), out)
    assert json.loads(app_bag(out)["backend"])["backend"] == "etcd"
    return out


def test_lock_status_history_and_worker_hooks_with_etcd_unreachable(ctx, supervisor, wired):
    out = changed(ctx, wired, principal_relation(requests=[request("op1")]))
    wired.cluster.members[0].kill()
    out = ctx.run(worker_hook("rollingops_queue_changed"), out)
    out = ctx.run(worker_hook("rollingops_lock_granted"), out)
    ctx.run(ctx.on.action("lock-status"), out)
    results = ctx.action_results or {}
    assert results["backend"] == "etcd"
    assert results["etcd-reachable"] is False
    assert results["etcd-error"]
    assert results["holders"] == {}
    assert results["queue"]["pending"]["1"]["op"] == "op1", "the mirror, not an empty queue"
    ctx.run(ctx.on.action("history"), out)
    assert (ctx.action_results or {})["source"].startswith("mirror (etcd unreachable: ")
    for action, params in (
        ("pause", {"reason": "x"}),
        ("resume", {}),
        ("force-release", {"unit": "a/0", "reason": "x"}),
        ("cancel", {"op": "op1", "reason": "x"}),
        ("run-exclusive", {"command": "true"}),
    ):
        with pytest.raises(testing.ActionFailed, match=r"^etcd: "):
            ctx.run(ctx.on.action(action, params=params), out)
    assert [op.id for op in record_of(out).queue.pending] == ["op1"]
    wired.cluster.members[0].restart()
    assert [op.id for op in etcd_queue(wired).pending] == ["op1"]


def test_force_release_under_etcd_of_a_unit_that_only_waits(ctx, supervisor, wired):
    state = wired.state(peer(), leader=True)
    with EtcdClient(settings_for(wired.cluster)) as client:
        hold_lock(client, wired.cluster.prefix, "holder/3")
        waiter = FairSemaphore(
            client, waiters_prefix(wired.cluster.prefix), 1, Lease(client, 30), "wait/1"
        )
        client.put(waiter.key, b"wait/1", waiter._lease.id)
        params = {"unit": "wait/1", "reason": "x"}
        with pytest.raises(testing.ActionFailed, match="wait/1 holds no lock"):
            ctx.run(ctx.on.action("force-release", params=params), state)
        ctx.run(ctx.on.action("lock-status"), state)
    results = ctx.action_results or {}
    assert [h["unit"] for h in results["holders"].values()] == ["holder/3"]
    assert [w["unit"] for w in results["domain-queue"].values()] == ["wait/1"]


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param({}, id="intact"),
        pytest.param(
            {"grants": "{{{"},
            id="grants",
        ),
        pytest.param(
            {"backend": "{{{"},
            id="backend",
        ),
    ],
)
def test_tokens_keep_rising_when_etcd_returns_whatever_the_bag_says(
    ctx, supervisor, wired, corrupt
):
    out = fallen_back(ctx, wired)
    out = ctx.run(ctx.on.action("run-exclusive", params={"command": "true"}), out)
    for _ in range(2):
        out = ctx.run(ctx.on.update_status(), out)
    (entry,) = record_of(out).queue.history
    assert entry.outcome.value == "done"
    out = back_on_etcd(ctx, wired, tamper(out, app=corrupt))
    with EtcdClient(settings_for(wired.cluster)) as client:
        hold_lock(client, wired.cluster.prefix, "other/3")
        (later,) = DomainControl(client, wired.cluster.prefix, 1).contenders()
    assert later.token > entry.token, "fencing tokens went backwards"


def test_a_pause_under_peer_survives_the_return_to_etcd(ctx, supervisor, wired):
    out = fallen_back(ctx, wired)
    out = ctx.run(ctx.on.action("pause", params={"reason": "freeze"}), out)
    out = back_on_etcd(ctx, wired, out)
    ctx.run(ctx.on.action("lock-status"), out)
    assert (ctx.action_results or {})["paused"] is True


def test_a_pause_under_etcd_holds_through_the_peer_fallback(ctx, supervisor, wired):
    out = ctx.run(
        ctx.on.action("pause", params={"reason": "freeze"}), wired.state(peer(), leader=True)
    )
    wired.cluster.members[0].kill()
    out = ctx.run(worker_hook("rollingops_etcd_failed"), out)
    out = ctx.run(ctx.on.action("run-exclusive", params={"command": "true"}), out)
    for _ in range(2):
        out = ctx.run(ctx.on.update_status(), out)
    assert record_of(out).exclusive_runs == (), "ran while the domain was paused"
