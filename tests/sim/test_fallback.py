"""The peer backend and the switches between etcd and peer, on the simulator."""

from __future__ import annotations

from test_rolling import events, request_in_order


def ended_units(cluster) -> set[str]:
    return {r["unit"] for r in events(cluster, "end")}


def test_peer_backend_without_etcd_rolls_one_unit_at_a_time_in_order(simulate_without_etcd):
    cluster = simulate_without_etcd(5)
    assert cluster.backend() == "peer"
    ops = request_in_order(cluster, range(5))
    cluster.run_until(lambda: len(events(cluster, "end")) == 5, timeout=60)
    starts = events(cluster, "start")
    assert [r["op"] for r in starts] == ops
    tokens = [r["token"] for r in starts]
    assert tokens == sorted(set(tokens))
    assert cluster.max_running == 1


def test_peer_backend_honours_max_concurrent(simulate_without_etcd):
    cluster = simulate_without_etcd(5, max_concurrent=2)
    request_in_order(cluster, range(5), results=["retry-hold", "release"])
    cluster.run_until(lambda: len(events(cluster, "end")) == 10, timeout=60)
    assert cluster.max_running == 2


def test_etcd_lost_mid_rolling_restart_falls_back_and_loses_nothing(simulate):
    cluster = simulate(5)
    request_in_order(cluster, range(5))
    cluster.run_until(lambda: len(events(cluster, "end")) >= 2, timeout=60)
    cluster.etcd.members[0].kill()
    cluster.run_until(
        lambda: ended_units(cluster) == {f"principal/{m}" for m in range(5)}, timeout=120
    )
    assert cluster.backend() == "peer"
    assert cluster.max_running <= 1
    assert sorted(r["op"] for r in events(cluster, "start")) == sorted(
        {r["op"] for r in events(cluster, "start")}
    ), "no operation ran twice"


def test_back_to_etcd_once_the_peer_queues_drain(simulate):
    cluster = simulate(3)
    cluster.etcd.members[0].kill()
    cluster.request(0)
    cluster.run_until(lambda: cluster.backend() == "peer", timeout=60)
    cluster.run_until(lambda: len(events(cluster, "end")) == 1, timeout=60)
    cluster.etcd.members[0].restart()
    cluster.update_status()
    cluster.run_until(lambda: cluster.backend() == "etcd", timeout=60)
    cluster.settle()
    cluster.request(1)
    cluster.run_until(lambda: len(events(cluster, "end")) == 2, timeout=60)
    assert events(cluster, "end")[-1]["unit"] == "principal/1"
    assert cluster.etcd_queue(0).pending == ()  # nothing stale left behind in etcd


def test_a_new_leader_takes_over_the_peer_grants(simulate_without_etcd):
    cluster = simulate_without_etcd(3)
    request_in_order(cluster, range(3), results=[None])
    cluster.run_until(lambda: len(events(cluster, "end")) == 1, timeout=60)
    cluster.elect(2)
    cluster.settle()
    assert cluster.running() == {"rollingops/0"}, "the half-done grant is still counted"
    cluster.request(0, kwargs={"results": ["release"]})  # unrelated; the stuck one holds
    cluster.settle()
    assert len(events(cluster, "start")) == 1
    assert cluster.max_running == 1


def test_tokens_keep_rising_when_the_application_returns_to_etcd(simulate):
    cluster = simulate(3)
    cluster.etcd.members[0].kill()
    cluster.request(0)
    cluster.run_until(lambda: cluster.backend() == "peer", timeout=60)
    for round_ in range(3):  # many peer grants while etcd's revision stands still
        for unit in range(3):
            if (round_, unit) != (0, 0):
                cluster.request(unit)
        cluster.run_until(lambda r=round_: len(events(cluster, "end")) == 3 * (r + 1), timeout=90)
    highest_peer = max(r["token"] for r in events(cluster, "start"))
    cluster.etcd.members[0].restart()
    cluster.update_status()
    cluster.run_until(lambda: cluster.backend() == "etcd", timeout=60)
    cluster.settle()
    cluster.request(1)
    cluster.run_until(lambda: len(events(cluster, "end")) == 10, timeout=60)
    assert events(cluster, "start")[-1]["token"] > highest_peer
