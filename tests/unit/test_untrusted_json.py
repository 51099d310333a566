"""Untrusted JSON: limits checked before ``json.loads``, without recursion, in linear time."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rollingops_principal.untrusted_json import (
    UntrustedJsonError,
    loads,
    nesting_depth,
    value_depth,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=40,
)


def load(raw: str, max_bytes: int = 1 << 20, max_depth: int = 8) -> Any:
    return loads(raw, "value", max_bytes=max_bytes, max_depth=max_depth)


@given(json_values)
def test_the_scan_finds_the_depth_json_has(value: Any) -> None:
    for raw in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        assert nesting_depth(raw) == value_depth(value)


@settings(max_examples=500)
@given(st.text(alphabet='[]{}"\\a:,1 \n', max_size=60))
def test_the_scan_never_underestimates_what_json_parses(raw: str) -> None:
    """Valid or not, whatever ``json.loads`` accepts is no deeper than the scan said."""
    try:
        value = json.loads(raw)
    except ValueError:
        return
    assert value_depth(value) <= nesting_depth(raw)


def test_brackets_inside_strings_do_not_count() -> None:
    assert nesting_depth(json.dumps({"a": "[[[{{{", "b": ['\\"]]]', "\\\\"]})) == 2
    assert nesting_depth('"unterminated [[[ ') == 0
    assert nesting_depth('[[ "unterminated [[[ ') == 2


@pytest.mark.parametrize(
    "raw", ["[" * 100_000, '{"k": ' * 5000 + "1" + "}" * 5000, "[" * 65 + "]" * 65]
)
def test_deep_values_are_refused_before_parsing(raw: str) -> None:
    with pytest.raises(UntrustedJsonError, match=r"^value nested deeper than 64$"):
        load(raw, max_depth=64)


def test_a_value_at_the_depth_limit_parses() -> None:
    assert value_depth(load("[" * 64 + "]" * 64, max_depth=64)) == 64


def test_size_is_counted_in_utf8_bytes() -> None:
    raw = json.dumps("é" * 600, ensure_ascii=False)  # 1202 bytes, 602 characters
    with pytest.raises(UntrustedJsonError, match=r"^value field is 2 KiB, over 1 KiB$"):
        load(raw, max_bytes=1024)
    assert load(json.dumps("é" * 500, ensure_ascii=False), max_bytes=1024) == "é" * 500


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("[NaN]", "value is not JSON: NaN is not a JSON number"),
        ('{"x": Infinity}', "value is not JSON: Infinity is not a JSON number"),
        ("-Infinity", "value is not JSON: -Infinity is not a JSON number"),
        ("[1e999]", "value: number 1e999 is out of range"),
        ("-1e400", "value: number -1e400 is out of range"),
        ("[" + "7" * 4301 + "]", "value: integer of 4301 digits, more than 4300"),
        ("{'single': 1}", "value is not JSON: Expecting property name enclosed in double quotes"),
        ("", "value is not JSON: Expecting value"),
    ],
)
def test_what_json_cannot_carry_is_refused(raw: str, reason: str) -> None:
    with pytest.raises(UntrustedJsonError) as refused:
        load(raw)
    assert str(refused.value) == reason


def test_ordinary_values_parse_as_json_does() -> None:
    raw = json.dumps({"a": [1, -2.5e10, None, True, 'x\u0000"]'], "b": {"c": "-" * 4300}})
    assert load(raw) == json.loads(raw)
    assert load("-" + "9" * 4300) == -int("9" * 4300)


def test_value_depth_needs_no_recursion() -> None:
    deep: Any = 0
    for _ in range(100_000):
        deep = [deep]
    assert value_depth(deep) == 100_000
    assert value_depth({"a": [], "b": [[{}]]}) == 4
    assert value_depth("scalar") == 0


@pytest.mark.parametrize(
    "raw",
    [
        '"' + '\\"' * 500_000,  # an unterminated string full of escaped quotes
        '"",' * 350_000,
        "[]" * 500_000,
        "[" * 1_000_000,
    ],
)
def test_the_scan_is_linear_on_hostile_megabytes(raw: str) -> None:
    """A backtracking scan would take hours on the first one; this takes a fraction of a second
    (the bound is loose: the machine may be busy)."""
    start = time.monotonic()
    with pytest.raises(UntrustedJsonError):
        load(raw, max_bytes=4 << 20, max_depth=64)
    assert time.monotonic() - start < 10
