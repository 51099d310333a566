"""The library forgives what a charm author or a subordinate of another version does to it."""

from __future__ import annotations

import dataclasses

import ops
import pytest
from ops import testing
from rollingops_principal import LockResult, RollingOps, RollingOpsError
from rollingops_principal.testing import requests_of, subordinate_relation

META = {"name": "my-charm", "provides": {"rollingops": {"interface": "rollingops"}}}


class Careful(ops.CharmBase):
    """Requests a restart in config-changed unless one is already waiting."""

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.rolling = RollingOps(self, callbacks={"restart": self._restart})
        framework.observe(self.on.config_changed, self._on_config_changed)

    def _on_config_changed(self, _: ops.ConfigChangedEvent) -> None:
        if not self.rolling.is_waiting("restart"):
            self.rolling.request("restart", {"reason": "config"})

    def _restart(self, reason: str) -> LockResult:
        return LockResult.RELEASE


def newer_subordinate() -> testing.Relation:
    """A subordinate speaking a protocol this library does not know."""
    return testing.Relation(
        "rollingops",
        remote_app_name="rollingops",
        remote_units_data={0: {"protocol": "2", "state": "{}"}},
    )


def test_a_request_sent_on_a_relation_that_went_away_is_dropped_and_can_be_made_again():
    ctx = testing.Context(Careful, meta=META)
    relation = subordinate_relation()
    state = ctx.run(ctx.on.config_changed(), testing.State(relations={relation}))
    assert len(requests_of(state)) == 1
    state = ctx.run(ctx.on.relation_broken(state.get_relation(relation.id)), state)
    state = dataclasses.replace(state, relations=set())
    with ctx(ctx.on.update_status(), state) as manager:
        assert not manager.charm.rolling.is_waiting("restart")
        assert manager.charm.rolling.state is None
    again = subordinate_relation()
    state = ctx.run(ctx.on.relation_created(again), dataclasses.replace(state, relations={again}))
    state = ctx.run(ctx.on.config_changed(), state)
    assert [r.callback for r in requests_of(state)] == ["restart"], "asked again, on the new one"


def test_a_subordinate_of_another_protocol_breaks_no_hook():
    ctx = testing.Context(Careful, meta=META)
    kept = ctx.run(ctx.on.config_changed(), testing.State())
    relation = newer_subordinate()
    state = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0),
        dataclasses.replace(kept, relations={relation}),
    )
    assert len(requests_of(state)) == 1, "the kept request is sent all the same"
    with ctx(ctx.on.update_status(), state) as manager:
        status = manager.charm.rolling.state
        assert status is not None
        assert status.status == "unavailable"
        assert "unsupported protocol" in status.message
        assert manager.charm.rolling.granted is None


def test_a_malformed_subordinate_state_is_reported_not_raised():
    ctx = testing.Context(Careful, meta=META)
    relation = testing.Relation(
        "rollingops",
        remote_app_name="rollingops",
        remote_units_data={0: {"protocol": "1", "state": '{"status": "bogus"}'}},
    )
    with ctx(ctx.on.update_status(), testing.State(relations={relation})) as manager:
        status = manager.charm.rolling.state
        assert status is not None
        assert status.status == "unavailable"


class OneEvent(ops.CharmBase):
    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.rolling = RollingOps(self, events="restart")  # a string, not a tuple


def test_events_given_as_one_string_is_one_name():
    ctx = testing.Context(OneEvent, meta=META)
    with ctx(ctx.on.update_status(), testing.State()) as manager:
        manager.charm.rolling.request("restart")
        with pytest.raises(RollingOpsError, match=r"registered \['restart'\]"):
            manager.charm.rolling.request("restrat")
