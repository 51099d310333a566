"""The worker lifecycle's rules (``rollingops_charm.worker_lifecycle.next_step``)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st
from rollingops_charm.worker_lifecycle import RESTART_WAIT_BOUND, Busy, Situation, Step, next_step

from rollingops.sync_holds import SyncHold

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
HOLD = SyncHold(holder="script", context="command", token=4, since=NOW)

busies = st.builds(
    Busy,
    operation=st.none() | st.just("op-1"),
    holds=st.sampled_from([(), (HOLD,)]),
)
situations = st.builds(
    Situation,
    wanted=st.booleans(),
    running=st.booleans(),
    digest=st.sampled_from(["a", "b"]),
    running_digest=st.sampled_from(["", "a"]),
    busy=busies,
    waiting_since=st.none()
    | st.timedeltas(dt.timedelta(0), 2 * RESTART_WAIT_BOUND).map(lambda ago: NOW - ago),
)


@given(situations)
def test_a_running_worker_serving_something_is_restarted_only_past_the_bound(situation):
    step = next_step(situation, NOW)
    if step is Step.RESTART and situation.busy:
        assert situation.waiting_since is not None
        assert NOW - situation.waiting_since >= RESTART_WAIT_BOUND


@given(situations)
def test_nothing_waits_that_serves_nothing_and_nothing_unwanted_runs(situation):
    step = next_step(situation, NOW)
    if not situation.wanted:
        assert step is Step.STOP
    if step is Step.WAIT:
        assert situation.busy
        assert situation.running
        assert situation.changed


@given(situations)
def test_an_unchanged_running_worker_is_kept(situation):
    step = next_step(situation, NOW)
    if situation.wanted and situation.running and not situation.changed:
        assert step is Step.KEEP


def test_busy_says_what_a_restart_waits_for():
    assert Busy(operation="op-3", holds=(HOLD,)).describe() == (
        "operation op-3, sync hold by script (token 4)"
    )
    assert not Busy()
