"""The switching model catches the bugs it exists for, when they are put back.

Each scenario is a short sequence of hooks that passes on the shipped code; each test then puts
one known bug back into the real function the model drives (monkeypatched) and checks that the
same sequence now fails the model's invariants:

1. an operator's ``run-exclusive`` queued in etcd while the peer backend grants (the action
   chose its backend apart from the leader's decision): lost when the application returns to
   etcd and the record's queue replaces etcd's;
2. a peer grant kept for an operation that was released to retry (``retry-release``): the
   same operation would be claimed again under the same token before the unit already
   waiting. A unit now refuses a grant whose token it already had, so the kept grant stalls
   the domain instead: the model never settles;
7. the leader granting under peer before every unit published its queue for the new epoch:
   an operation still running from an etcd grant overlaps a new peer grant (k exceeded).
"""

from __future__ import annotations

import dataclasses

import pytest
from rollingops_charm import backends
from test_switching_model import SETTINGS, Model, Unit, explore, model_etcd_lock

import rollingops.leadership
from rollingops import peer_scheduler
from rollingops.backend_choice import Backend

LOST_OPERATOR_COMMAND = [
    ("etcd-down", ""),
    ("worker-gives-up", "app/0"),
    ("lead", ""),
    ("request", "app/1"),
    ("sync", "app/1"),
    ("etcd-up", ""),
    ("run-exclusive", "app/0"),
]
RETRY_RELEASE_UNDER_PEER = [
    ("worker-gives-up", "app/0"),
    ("request", "app/0"),
    ("request", "app/1"),
    ("lead", ""),
    ("sync", "app/0"),
    ("sync", "app/1"),
    ("sync", "app/2"),
    ("lead", ""),
    ("sync", "app/0"),
    ("answer", "app/0", "retry-release"),
    ("sync", "app/0"),
    ("lead", ""),
    ("sync", "app/0"),
]
ETCD_HOLDER_DURING_SWITCH = [
    ("request", "app/0"),
    ("sync", "app/0"),
    ("worker", ""),
    ("etcd-down", ""),
    ("worker-gives-up", "app/0"),
    ("lead", ""),
    ("request", "app/1"),
    ("sync", "app/1"),
    ("sync", "app/2"),
    ("lead", ""),
    ("sync", "app/1"),
]


@pytest.mark.parametrize(
    "steps", [LOST_OPERATOR_COMMAND, RETRY_RELEASE_UNDER_PEER, ETCD_HOLDER_DURING_SWITCH]
)
def test_the_shipped_code_passes_each_scenario(steps):
    explore(steps, capacity=1, etcd_up=True)


def test_bug_1_an_action_writing_to_etcd_under_peer_is_caught(monkeypatch):
    def etcd_whenever_configured(model: Model, name: str) -> backends.LockBackend:
        """The old action wiring: etcd if configured, whatever the leader decided; the
        command queued in etcd's copy only, the unit's record untouched."""

        class EtcdOnly(model_etcd_lock(model.etcd)):
            def enqueue(self, record, op):
                with self.session() as etcd:
                    etcd.store().update(lambda queue: queue.enqueue(op))
                return record

        return backends.select(
            Backend.ETCD,
            etcd=SETTINGS,
            peer=None,
            unit=name,
            capacity=model.capacity,
            waiting_for="",
            etcd_lock=EtcdOnly,
        )

    monkeypatch.setattr(Model, "queue_command", _with_backend(etcd_whenever_configured))
    with pytest.raises(AssertionError, match=r"accepted and never run: .*exclusive-"):
        explore(LOST_OPERATOR_COMMAND, capacity=1, etcd_up=True)


def _with_backend(choose):
    """``Model.queue_command`` (the action alone) with its backend chosen by ``choose``."""
    queue_command = Model.queue_command

    def run(model: Model, name: str) -> None:
        original = Model.backend
        Model.backend = choose  # type: ignore[method-assign]
        try:
            queue_command(model, name)
        finally:
            Model.backend = original  # type: ignore[method-assign]

    return run


def test_bug_2_a_grant_kept_across_retry_release_is_caught(monkeypatch):
    def claimable_whatever_the_attempt(grant, queue) -> bool:
        head = queue.pending[0] if queue.pending and queue.current is None else None
        return head is not None and head.id == grant.op_id

    monkeypatch.setattr(peer_scheduler, "is_claimable", claimable_whatever_the_attempt)
    with pytest.raises(AssertionError, match="did not settle"):
        explore(RETRY_RELEASE_UNDER_PEER, capacity=1, etcd_up=False)


def test_bug_7_granting_before_every_unit_published_is_caught(monkeypatch):
    lead = rollingops.leadership.lead

    def lead_without_the_epoch_gate(state, known, fence, now):
        published = {unit: state.epoch for unit in known.members}
        return lead(dataclasses.replace(state, epochs=published), known, fence, now)

    monkeypatch.setattr("test_switching_model.lead", lead_without_the_epoch_gate)
    with pytest.raises(AssertionError, match="run at once"):
        explore(ETCD_HOLDER_DURING_SWITCH, capacity=1, etcd_up=True)


def test_the_model_reads_the_leaders_decision_for_every_queue_write():
    """The scenarios above are only meaningful if the model's backend follows the decision."""
    model = Model(1)
    model.units = {"app/0": Unit()}
    model.etcd.up = False
    model.units["app/0"].etcd_failed = True
    model.lead()
    assert model.peer_state().backend is Backend.PEER
    assert isinstance(model.backend("app/0"), backends.LocalLock)
