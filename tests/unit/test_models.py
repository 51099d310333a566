"""The per-unit queue: the seed's rules, the retry semantics, and nothing ever lost."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rollingops.models import (
    MAX_KWARGS_BYTES,
    MAX_PENDING,
    Operation,
    OperationResult,
    Outcome,
    QueueFullError,
    UnitQueue,
)

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)


def op(op_id: str, callback: str = "restart", max_retry: int | None = None, **kwargs: object):
    return Operation(
        id=op_id, callback=callback, kwargs=kwargs, max_retry=max_retry, requested_at=NOW
    )


def run(queue: UnitQueue, result: OperationResult, token: int = 7) -> tuple[UnitQueue, bool]:
    """Claim the head (unless running), report ``result``, apply it."""
    if queue.current is None:
        queue = queue.claim(token, NOW)
    assert queue.current is not None
    return queue.report(queue.current.operation.id, result).finish(NOW)


def test_request_equal_to_last_waiting_one_is_ignored():
    queue = UnitQueue().enqueue(op("a", delay=1)).enqueue(op("b", delay=1))
    assert [o.id for o in queue.pending] == ["a"]


def test_different_kwargs_or_callback_are_appended_in_order():
    queue = UnitQueue().enqueue(op("a", delay=1)).enqueue(op("b", delay=2))
    queue = queue.enqueue(op("c", "reload", delay=2))
    assert [o.id for o in queue.pending] == ["a", "b", "c"]


def test_request_equal_to_the_running_one_is_kept():
    queue = UnitQueue().enqueue(op("a")).claim(3, NOW).enqueue(op("b"))
    assert [o.id for o in queue.pending] == ["b"]


def test_duplicate_id_is_rejected():
    queue = UnitQueue().enqueue(op("a", n=1))
    with pytest.raises(ValueError, match="already queued"):
        queue.enqueue(op("a", n=2))


def test_queue_is_bounded():
    queue = UnitQueue()
    for index in range(MAX_PENDING):
        queue = queue.enqueue(op(f"op{index}", n=index))
    with pytest.raises(QueueFullError):
        queue.enqueue(op("one-more"))


def test_oversized_kwargs_are_rejected_with_their_size():
    with pytest.raises(ValidationError, match="bytes, more than"):
        op("big", blob="x" * MAX_KWARGS_BYTES)


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "x" * 65, "-lead"])
def test_bad_operation_ids_are_rejected(bad: str):
    with pytest.raises(ValidationError):
        op(bad)


def test_release_completes_and_records_history():
    queue, kept = run(UnitQueue().enqueue(op("a")), OperationResult.RELEASE, token=9)
    assert not kept
    assert queue.current is None
    assert not queue.pending
    (entry,) = queue.history
    assert (entry.id, entry.outcome, entry.attempts, entry.token) == ("a", Outcome.DONE, 1, 9)


def test_retry_release_goes_back_to_the_head_and_releases():
    queue = UnitQueue().enqueue(op("a", n=1)).enqueue(op("b", n=2))
    queue, kept = run(queue, OperationResult.RETRY_RELEASE)
    assert not kept
    assert [o.id for o in queue.pending] == ["a", "b"]
    assert queue.pending[0].attempt == 1


def test_retry_hold_keeps_the_lock_and_the_token():
    queue, kept = run(UnitQueue().enqueue(op("a")), OperationResult.RETRY_HOLD, token=11)
    assert kept
    assert queue.current is not None
    assert queue.current.operation.attempt == 2
    assert queue.current.token == 11
    assert queue.current.result is None


@pytest.mark.parametrize("result", [OperationResult.RETRY_HOLD, OperationResult.RETRY_RELEASE])
def test_retries_beyond_max_retry_are_dropped_with_a_reason(result: OperationResult):
    queue = UnitQueue().enqueue(op("a", max_retry=2))
    for _ in range(3):
        queue, _kept = run(queue, result)
    assert queue.current is None
    assert not queue.pending
    (entry,) = queue.history
    assert entry.outcome is Outcome.DROPPED
    assert entry.attempts == 3
    assert "max-retry 2" in entry.reason


def test_report_for_an_operation_that_is_not_running_is_refused():
    queue = UnitQueue().enqueue(op("a")).claim(1, NOW)
    with pytest.raises(ValueError, match="not running"):
        queue.report("other", OperationResult.RELEASE)


def test_regrant_changes_the_token_but_not_the_attempt():
    queue = UnitQueue().enqueue(op("a")).claim(1, NOW).regrant(5, NOW)
    assert queue.current is not None
    assert (queue.current.token, queue.current.operation.attempt) == (5, 1)


def test_stored_as_plain_json_not_json_in_strings():
    queue = UnitQueue().enqueue(op("a", note='say "hi"')).claim(2, NOW)
    document = json.loads(queue.to_json())
    assert document["current"]["operation"]["kwargs"] == {"note": 'say "hi"'}
    assert document["current"]["operation"]["max-retry"] is None
    assert UnitQueue.model_validate_json(queue.to_json()) == queue


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(kwargs=st.dictionaries(st.text(), json_values, max_size=6))
def test_any_json_kwargs_round_trip_exactly(kwargs: dict[str, object]):
    queue = UnitQueue().enqueue(
        Operation(id="a", callback="cb", kwargs=kwargs, requested_at=NOW)  # type: ignore[arg-type]
    )
    assert UnitQueue.model_validate_json(queue.to_json()).pending[0].kwargs == kwargs


actions = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.sampled_from(["restart", "reload"]), st.integers(0, 2)),
        st.tuples(st.just("run"), st.sampled_from(list(OperationResult)), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(actions=actions, max_retry=st.none() | st.integers(0, 3))
def test_no_operation_is_lost_and_first_attempts_run_in_request_order(
    actions: list[tuple[str, object, int]], max_retry: int | None
):
    queue = UnitQueue()
    accepted: list[str] = []
    first_runs: list[str] = []
    for index, (kind, arg, n) in enumerate(actions):
        if kind == "enqueue":
            before = queue
            try:
                queue = queue.enqueue(op(f"op{index}", str(arg), max_retry, n=n))
            except QueueFullError:
                continue
            if queue is not before:
                accepted.append(f"op{index}")
        elif queue.has_work:
            if queue.current is None and queue.pending[0].attempt == 0:
                first_runs.append(queue.pending[0].id)
            queue, _kept = run(queue, arg)  # type: ignore[arg-type]
        assert queue.current is None or queue.current.operation.attempt >= 1
        for item in queue.pending:
            assert max_retry is None or item.attempt <= max_retry
    finished = {entry.id for entry in queue.history}
    assert set(accepted) == queue.operation_ids() | finished
    assert first_runs == accepted[: len(first_runs)]
