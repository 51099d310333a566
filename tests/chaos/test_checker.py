"""The chaos checker on made-up histories: it must see what it is there to see."""

from __future__ import annotations

from checker import Hold, judge, overlaps, token_regressions
from hypothesis import given
from hypothesis import strategies as st


def hold(unit: str, op: str, token: int, start: float, end: float, attempt: int = 1) -> Hold:
    return Hold(unit, op, attempt, token, start, end)


def test_sequential_holds_pass():
    holds = [hold("a", "1", 1, 0, 1), hold("b", "2", 2, 1, 2), hold("a", "3", 3, 2.5, 3)]
    outcomes = {"1": ["done"], "2": ["done"], "3": ["done"]}
    verdict = judge(holds, 1, {}, {"1", "2", "3"}, outcomes, kills={})
    assert verdict.ok, verdict.summary()


def test_an_overlap_without_a_lost_lock_is_a_violation():
    holds = [hold("a", "1", 1, 0, 2), hold("b", "2", 2, 1, 3)]
    excused, violations = overlaps(holds, 1, {})
    assert not excused
    assert len(violations) == 1


def test_an_overlap_is_excused_only_for_an_older_holder_told_of_its_loss():
    holds = [hold("a", "1", 1, 0, 2), hold("b", "2", 2, 1, 3)]
    excused, violations = overlaps(holds, 1, {"a": [1.5]})
    assert (excused, violations) == ([(holds[0], holds[1])], [])
    _, violations = overlaps(holds, 1, {"a": [-1.0]})  # told before it even started
    assert violations
    newer = [hold("a", "1", 5, 0, 2), hold("b", "2", 2, 1, 3)]
    _, violations = overlaps(newer, 1, {"a": [1.5]})  # a newer token is never excused
    assert violations


def test_k_holders_may_overlap_but_not_k_plus_one():
    two = [hold("a", "1", 1, 0, 2), hold("b", "2", 2, 1, 3)]
    assert overlaps(two, 2, {}) == ([], [])
    three = [*two, hold("c", "3", 3, 1.5, 4)]
    assert len(overlaps(three, 2, {})[1]) == 1


def test_lost_and_doubled_operations_are_counted():
    holds = [hold("a", "1", 1, 0, 1), hold("a", "1", 2, 2, 3)]
    verdict = judge(holds, 1, {}, {"1", "2"}, {"1": ["done", "done"]}, kills={})
    assert verdict.lost == ["2"]
    assert "1" in verdict.doubled
    assert not verdict.ok


def test_a_rerun_after_a_lost_lock_is_not_doubled():
    holds = [hold("a", "1", 1, 0, 1), hold("a", "1", 2, 2, 3)]
    verdict = judge(holds, 1, {"a": [0.5]}, {"1"}, {"1": ["done"]}, kills={})
    assert verdict.doubled == []


def rerun_history(
    *, marked: bool = True, killed_at: float = 1.0, unit: str = "a", token: int = 91
) -> list[Hold]:
    """CI's seed 20261129: app/4's worker SIGKILLed while op4 ran (token 38, never ended);
    the restarted worker granted op4 attempt 1 again under token 91."""
    killed = Hold("a", "op4", 1, 38, 0.0, killed_at)
    again = Hold(unit, "op4", 1, token, 5.0, 6.0, rerun=marked)
    return [killed, again]


def judged_rerun(holds: list[Hold], kills: dict[str, list[float]]) -> list[str]:
    return judge(holds, 1, {}, {"op4"}, {"op4": ["done"]}, kills=kills).doubled


def test_a_told_rerun_after_a_kill_during_the_callback_is_not_doubled():
    verdict = judge(rerun_history(), 1, {}, {"op4"}, {"op4": ["done"]}, kills={"a": [1.0]})
    assert (verdict.doubled, verdict.repeats_excused) == ([], ["op4 attempt 1 started 2 times"])


@given(
    marked=st.booleans(),
    kill=st.sampled_from(["during", "before-start", "after-rerun", "other-unit", "none"]),
    same_unit=st.booleans(),
    newer_token=st.booleans(),
)
def test_a_second_start_is_excused_only_when_killed_told_and_newer(
    marked, kill, same_unit, newer_token
):
    """Without the marking, without a kill between the two runs (of that very unit), on
    another unit or under an older token, the second start is a run twice."""
    kills = {
        "during": {"a": [1.0]},
        "before-start": {"a": [-1.0]},
        "after-rerun": {"a": [5.5]},
        "other-unit": {"b": [1.0]},
        "none": {},
    }[kill]
    holds = rerun_history(
        marked=marked, unit="a" if same_unit else "b", token=91 if newer_token else 30
    )
    excused = marked and kill == "during" and same_unit and newer_token
    assert (judged_rerun(holds, kills) == []) is excused


def test_token_regressions_are_found():
    holds = [hold("a", "1", 5, 0, 1), hold("b", "2", 3, 2, 3)]
    assert token_regressions(holds, {}) == ["b op 2: token 3 after 5"]
    assert token_regressions(holds, {"b": [2.5]}) == [], "a stale holder told of its loss"


def test_a_late_start_with_an_older_token_is_excused_only_if_told_of_its_loss():
    """Paused after its claim, a holder acts on resume with its old token (chaos seed
    20261129 in CI): the resource refuses it, provided its worker logged the loss."""
    holds = [hold("a", "96", 96, 0, 2), hold("b", "86", 86, 1, 3)]
    excused, violations = overlaps(holds, 1, {"b": [1.5]})
    assert (excused, violations) == ([(holds[1], holds[0])], [])
    assert overlaps(holds, 1, {})[1], "never told: a violation"
    assert overlaps(holds, 1, {"b": [0.5]})[1], "told before it started: a violation"
    newer = [hold("a", "96", 96, 0, 2), hold("b", "99", 99, 1, 3)]
    assert overlaps(newer, 1, {"b": [1.5]})[1], "a newer token is never excused"


def test_a_stale_holder_told_after_its_grant_but_before_its_start_is_excused():
    """Chaos seed 1 on a loaded machine: app/1 granted op19 (token 185), was paused, learnt
    its loss 5.6 s before its hook, already on its way, started the callback, after app/5's
    token 204. The resource refuses 185; the worker was told of the loss of that grant."""
    newer = Hold("app/5", "op9", 1, 204, 0.0, 0.2)
    stale = Hold("app/1", "op19", 1, 185, 0.04, 0.3, granted=-10.8)
    assert overlaps([newer, stale], 1, {"app/1": [-5.6]}) == ([(stale, newer)], [])
    assert token_regressions([newer, stale], {"app/1": [-5.6]}) == []
    told_before_its_grant = {"app/1": [-11.0]}
    assert overlaps([newer, stale], 1, told_before_its_grant)[1]
    assert token_regressions([newer, stale], told_before_its_grant)


@given(st.lists(st.floats(min_value=0.01, max_value=5), min_size=1, max_size=20))
def test_any_back_to_back_schedule_with_rising_tokens_passes(durations):
    holds, clock = [], 0.0
    for index, duration in enumerate(durations):
        holds.append(hold(f"u{index % 3}", str(index), index + 1, clock, clock + duration))
        clock += duration
    ops = {str(i) for i in range(len(durations))}
    verdict = judge(holds, 1, {}, ops, {op: ["done"] for op in ops}, kills={})
    assert verdict.ok, verdict.summary()


@given(
    st.lists(st.floats(min_value=0.1, max_value=5), min_size=2, max_size=10),
    st.data(),
)
def test_shifting_any_hold_into_its_predecessor_is_caught(durations, data):
    holds, clock = [], 0.0
    for index, duration in enumerate(durations):
        holds.append(hold(f"u{index}", str(index), index + 1, clock, clock + duration))
        clock += duration
    victim = data.draw(st.integers(min_value=1, max_value=len(holds) - 1))
    moved = holds[victim]
    earlier = holds[victim - 1]
    holds[victim] = Hold(moved.unit, moved.op, 1, moved.token, earlier.start + 0.01, moved.end)
    assert overlaps(holds, 1, {})[1]
