"""What an operator sees and does, on the simulator with real workers on a real etcd.

Each test starts from what the real hooks produced and reads the views with no extra
``update-status`` in between (on Juju that is five minutes away).
"""

from __future__ import annotations

from test_rolling import events

SUB = "rollingops"


def test_force_release_ends_the_stuck_op_tells_its_principal_and_moves_on(simulate):
    cluster = simulate(3)
    stuck = cluster.request(0, kwargs={"results": [None]})  # never answers
    cluster.run_until(lambda: len(events(cluster, "start")) == 1, timeout=30)
    cluster.request(1)
    cluster.settle()
    assert len(events(cluster, "start")) == 1, "op 2 waits behind the stuck holder"

    released = cluster.action(f"{SUB}/2", "force-release", {"unit": f"{SUB}/0", "reason": "hung"})
    assert released["unit"] == f"{SUB}/0"
    cluster.run_until(lambda: len(events(cluster, "end")) == 2, timeout=60)
    cluster.settle()

    (lost,) = events(cluster, "lost")
    assert (lost["unit"], lost["op"]) == ("principal/0", stuck)
    assert "hung" in lost["reason"]
    victim = cluster.etcd_queue(0)
    assert [(e.id, e.outcome.value) for e in victim.history] == [(stuck, "revoked")]
    assert not cluster.status(f"{SUB}/0").startswith("holding lock")
    assert events(cluster, "start")[-1]["unit"] == "principal/1"
    history = cluster.action(f"{SUB}/0", "history")
    assert history["operations"]["1"]["outcome"] == "revoked"


def test_history_and_lock_status_are_live_and_status_never_claims_an_ended_hold(simulate):
    cluster = simulate(2)
    op = cluster.request(0)
    # The worker applies the principal's result on its own, after the hooks: wait for it.
    cluster.run_until(lambda: op in {e.id for e in cluster.etcd_queue(0).history}, timeout=30)
    cluster.settle()
    history = cluster.action(f"{SUB}/0", "history")
    assert history["count"] == 1
    assert history["source"] == "etcd"
    assert (history["operations"]["1"]["op"], history["operations"]["1"]["outcome"]) == (
        op,
        "done",
    )
    status = cluster.action(f"{SUB}/0", "lock-status")
    assert status["backend"] == "etcd"
    assert "running" not in status["queue"]
    assert status["holders"] == {}
    assert not cluster.status(f"{SUB}/0").startswith("holding lock")


def test_a_waiting_unit_says_since_when_and_how_many_without_update_status(simulate):
    cluster = simulate(2)
    cluster.request(0, kwargs={"results": [None]})
    cluster.run_until(lambda: len(events(cluster, "start")) == 1, timeout=30)
    cluster.request(1)
    cluster.settle()
    assert cluster.status(f"{SUB}/1").startswith("waiting for lock since ")
    assert cluster.status(f"{SUB}/1").split("; ")[0].endswith("1 queued here")  # then notes
    # Its worker enters etcd's queue on its own, right after the hook that took the request.
    cluster.run_until(lambda: f"{SUB}/1" in cluster.contenders(), timeout=30)
    status = cluster.action(f"{SUB}/1", "lock-status")
    assert status["position"] == 1
    assert status["holders"]["1"]["unit"] == f"{SUB}/0"
