"""The worker log as operators read it: written by the worker's own formatter, read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from testbed.workers import worker_logging

from rollingops.worker import record
from rollingops.worker_log import last, read_since


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Path]:
    """The unit's worker log, written through the worker's own logging set-up."""
    with worker_logging("app/0", tmp_path / "state") as path:
        yield path


def test_each_event_has_an_iso_time_and_a_sentence_and_the_json_stays(log):
    record("granted", op="op-1", callback="restart", attempt=1, token=42)
    record("etcd-unreachable", error="connection refused", seconds=1.5)
    record("releasing", token=42)  # JSON only
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in entries] == ["granted", "etcd-unreachable", "releasing"]
    assert entries[0]["token"] == 42
    assert entries[0]["time"].endswith("Z")
    assert "T" in entries[0]["time"]
    assert entries[0]["message"] == "granted op-1 (restart, attempt 1) with token 42"
    assert "message" not in entries[2]
    lines = read_since(log, 0).lines
    assert lines == [
        f"{entries[0]['time']} granted op-1 (restart, attempt 1) with token 42",
        f"{entries[1]['time']} etcd unreachable for 1.5 s: connection refused",
    ]


def test_reading_goes_on_from_where_it_stopped_and_restarts_on_a_new_log(log):
    record("granted", op="a", callback="restart", attempt=1, token=1)
    first = read_since(log, 0)
    record("released", token=1)
    second = read_since(log, first.offset)
    assert [line.split(" ", 1)[1] for line in second.lines] == ["released the lock (token 1)"]
    assert read_since(log, second.offset).lines == []
    log.write_text("")  # the unit's directory was recreated
    record("idle")
    assert [line.split(" ", 1)[1] for line in read_since(log, second.offset).lines] == [
        "idle: nothing queued, lease revoked"
    ]


def test_a_half_written_or_foreign_line_is_skipped_not_fatal(log):
    record("granted", op="a", callback="restart", attempt=1, token=1)
    with log.open("a") as out:
        out.write('not json\n["a list"]\n{"message": 5}\n{"event": "x"')  # no newline yet
    tail = read_since(log, 0)
    assert len(tail.lines) == 1
    assert tail.offset < log.stat().st_size, "the half line is read again next time"


def test_last_shows_the_most_recent_sentences(log):
    for token in range(30):
        record("released", token=token)
    assert [line.rsplit(" ", 1)[1] for line in last(log, 3)] == ["27)", "28)", "29)"]
    assert last(log.parent / "absent.log", 3) == []


def test_a_line_longer_than_one_read_does_not_stop_the_relay(log):
    record("paused", reason="€" * 45_000, by="rollingops/0")  # an operator's long reason
    record("granted", op="op-1", callback="restart", attempt=1, token=7)
    offset, relayed = 0, []
    for _ in range(5):  # five hooks, each relaying what is new
        tail = read_since(log, offset)
        relayed += tail.lines
        offset = tail.offset
    assert any("granted op-1" in line for line in relayed)
