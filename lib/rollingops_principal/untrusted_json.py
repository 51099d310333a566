"""JSON written by another application, parsed with limits before any model sees it.

A relation databag is written by a charm we do not control. ``json.loads`` recurses once per
nesting level, so a value nested a few thousand levels deep raises ``RecursionError`` in every
hook that reads it; a huge value costs memory and time in every hook too. ``loads`` therefore
checks the size in bytes and the nesting depth *without recursion* first, and only then calls
``json.loads``. It also refuses what JSON (RFC 8259) cannot carry but Python's ``json`` lets
through: ``NaN`` and ``Infinity`` (pydantic would silently turn them into ``null``), numbers
beyond a float's range (parsed as infinity) and integers too long to convert.

Every refusal is an ``UntrustedJsonError`` (a ``ValueError``) whose message is the reason to
give back to the writer. Standard library only: the principal library ships this module too.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import cast

MAX_INT_DIGITS = 4300
"""Longest integer accepted: CPython's default limit for int/str conversion, fixed here so a
changed interpreter setting cannot make parsing quadratic (``int()`` of a long string is)."""

_STRING_OR_TAIL = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|".*', re.DOTALL)
"""A JSON string, or an unterminated one with everything after it (consumed in one match, so
the scan stays linear). Escapes are not validated: ``json.loads`` refuses bad ones."""
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class UntrustedJsonError(ValueError):
    """The value is refused; the message says why, naming the value."""


class _RefusedTokenError(Exception):
    """A token refused while parsing; ``loads`` names the value in the message."""


def nesting_depth(raw: str) -> int:
    """Deepest bracket nesting of ``raw`` outside strings, found without recursion.

    An upper bound of the depth ``json.loads`` reaches on ``raw``, valid JSON or not:
    ``json.loads`` stops at the first error, and up to there its depth is this running count.
    The work is done by the ``re`` engine and ``itertools`` (no Python loop per character).
    """
    brackets = _NOT_BRACKET.sub("", _STRING_OR_TAIL.sub("", raw))
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def value_depth(value: object) -> int:
    """Nesting depth of an already parsed (or Python-built) value; scalars are 0, ``{}`` is 1.

    Iterative, so a value built in Python as deep as memory allows is measured, not recursed.
    """
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(cast("dict[object, object]", item).values())
        elif isinstance(item, (list, tuple)):
            children = list(cast("list[object]", item))
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def loads(raw: str, name: str, *, max_bytes: int, max_depth: int) -> object:
    """Parse ``raw`` (the value of databag key ``name``) within ``max_bytes`` and ``max_depth``.

    Raises ``UntrustedJsonError`` with the reason: over the size or depth limit, not JSON,
    or a number JSON cannot carry. Never ``RecursionError``.
    """
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise UntrustedJsonError(
            f"{name} field is {math.ceil(size / 1024)} KiB, over {max_bytes // 1024} KiB"
        )
    if nesting_depth(raw) > max_depth:
        raise UntrustedJsonError(f"{name} nested deeper than {max_depth}")
    try:
        return json.loads(
            raw, parse_constant=_no_constant, parse_float=_finite, parse_int=_bounded_int
        )
    except _RefusedTokenError as refused:
        raise UntrustedJsonError(f"{name}{refused}") from None
    except json.JSONDecodeError as error:
        raise UntrustedJsonError(f"{name} is not JSON: {error.msg}") from None
    except RecursionError:  # unreachable after the depth check; kept as the last guard
        raise UntrustedJsonError(f"{name} nested too deep") from None


def _no_constant(token: str) -> object:
    raise _RefusedTokenError(f" is not JSON: {token} is not a JSON number")


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _RefusedTokenError(f": number {token[:32]} is out of range")
    return value


def _bounded_int(token: str) -> int:
    digits = len(token.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _RefusedTokenError(f": integer of {digits} digits, more than {MAX_INT_DIGITS}")
    return int(token)
