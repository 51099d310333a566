"""The handoff breakdown (``rollingops_sim.handoff``) and the timeline it is read from."""

from __future__ import annotations

import pytest
from rollingops_sim.cluster import JUJU_EXEC, OPERATOR
from rollingops_sim.handoff import LOCK_GRANTED, QUEUE, RELATION_CHANGED, SEGMENTS, handoffs
from rollingops_sim.handoff import queued_round as roll


def test_every_hook_is_queued_then_started_then_ended(simulate):
    cluster = simulate(2)
    roll(cluster)
    assert all(h.queued <= h.started <= h.ended for h in cluster.timeline)
    assert {h.cause for h in cluster.timeline if h.hook == "restart-action"} == {OPERATOR}
    assert {h.cause for h in cluster.timeline if h.hook == LOCK_GRANTED} == {JUJU_EXEC}


def test_each_handoff_is_ordered_milestones_over_four_hooks(simulate):
    cluster = simulate(4)
    found = roll(cluster)
    assert [(h.giver, h.taker) for h in found] == [
        ("principal/1", "principal/2"),
        ("principal/2", "principal/3"),
    ], "every handoff of the round but the first, which follows the resume"
    for handoff in found:
        assert len(handoff.times) == len(SEGMENTS) + 1
        assert list(handoff.times) == sorted(handoff.times), "causal order"
        assert sum(handoff.segments) == pytest.approx(handoff.total)
        assert 0 <= handoff.blocked <= handoff.seconds_of(QUEUE) + 1e-9
        a, b = handoff.giver[-1], handoff.taker[-1]
        assert [(h.unit, h.hook, h.cause) for h in handoff.path] == [
            (f"principal/{a}", RELATION_CHANGED, f"rollingops/{a} wrote relation data"),
            (f"rollingops/{a}", RELATION_CHANGED, f"principal/{a} wrote relation data"),
            (f"rollingops/{b}", LOCK_GRANTED, JUJU_EXEC),
            (f"principal/{b}", RELATION_CHANGED, f"rollingops/{b} wrote relation data"),
        ]


def test_a_grant_to_a_unit_that_was_not_waiting_is_no_handoff(simulate):
    cluster = simulate(2)
    cluster.request(0)
    cluster.run_until(lambda: len(cluster.records()) == 2 and not cluster.contenders(), timeout=60)
    cluster.request(1)
    cluster.run_until(lambda: len(cluster.records()) == 4, timeout=60)
    assert handoffs(cluster) == []
