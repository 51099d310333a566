"""The worker's log as people read it: an ISO time and a short sentence per event.

The worker writes one JSON object per line (``worker.log`` in the unit's root-only directory):
``ts`` (epoch seconds), ``time`` (ISO 8601, UTC), ``event``, ``message`` (a sentence) and the
event's fields. The charm relays new lines to ``juju debug-log`` in each of its hooks, and
``lock-status`` shows the last ones, so an operator follows the worker without a shell.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

MAX_READ = 256 * 1024
"""Most bytes read from the log at once (a hook relays at most this much)."""


_REFUSED_CERTIFICATE = ("BAD_CERTIFICATE", "CERTIFICATE_EXPIRED")
"""TLS alerts gRPC reports when etcd refuses our client certificate in the handshake."""


def _etcd_error(error: object) -> str:
    """An etcd error, with what a refused certificate means.

    etcd's alert carries no reason: a certificate that etcd's clock finds expired or not yet
    valid (clock skew between this machine and etcd) reads the same as an untrusted one, and
    as nothing an operator would recognise.
    """
    text = str(error)
    if any(alert in text.upper() for alert in _REFUSED_CERTIFICATE):
        return (
            "etcd refused this unit's client certificate (expired or not yet valid by etcd's "
            f"clock, or not trusted by etcd): {text}"
        )
    return text


def _op(fields: Mapping[str, Any]) -> str:
    return f"{fields.get('op')} ({fields.get('callback', '?')}, attempt {fields.get('attempt')})"


_MESSAGES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "started": lambda f: f"worker started (pid {f.get('pid')})",
    "stopped": lambda _: "worker stopped",
    "waiting": lambda _: "waiting for the lock",
    "acquired": lambda f: f"lock acquired after {f.get('waited', 0):.3f} s",
    "granted": lambda f: f"granted {_op(f)} with token {f.get('token')}",
    "hook-fired": lambda f: f"fired {f.get('hook')}",
    "hook-failed": lambda f: (
        f"{f.get('hook')} failed (attempt {f.get('attempt', 1)}): {f.get('error')}"
    ),
    "result": lambda f: f"{f.get('op')} answered {f.get('result')} (token {f.get('token')})",
    "released": lambda f: f"released the lock (token {f.get('token')})",
    "idle": lambda _: "idle: nothing queued, lease revoked",
    "paused": lambda f: f"domain paused by {f.get('by')}: {f.get('reason')}; holding the slot",
    "pause-waited": lambda _: "domain resumed",
    "lock-lost": lambda f: f"lock lost ({f.get('stage', 'held')}): {f.get('reason')}",
    "operation-ended": lambda f: f"{f.get('op')} ended {f.get('outcome')}: {f.get('reason')}",
    "operation-gone": lambda f: f"{f.get('op')} was ended elsewhere (cancel or force-release)",
    "etcd-unreachable": lambda f: (
        f"etcd unreachable for {f.get('seconds', 0):.1f} s: {_etcd_error(f.get('error'))}"
    ),
    "etcd-failed": lambda f: (
        f"gave up: etcd unreachable past {f.get('deadline')} s "
        f"({_etcd_error(f.get('reason'))}); fired the etcd-failed hook"
    ),
    "sync-granted": lambda f: f"sync hold granted to {f.get('holder')} (token {f.get('token')})",
    "sync-released": lambda f: (
        f"sync hold of {f.get('holder')} released"
        + (f" after the lock was lost: {f.get('lost')}" if f.get("lost") else "")
    ),
    "sync-refused": lambda f: f"sync hold refused ({f.get('error')}): {f.get('message')}",
}
"""Events worth a sentence; the others (``releasing``, ``sync-waiting``...) stay in JSON only."""


def describe(event: str, fields: Mapping[str, Any]) -> str | None:
    """The sentence for one event, or ``None`` for one that only the JSON needs."""
    render = _MESSAGES.get(event)
    if render is None:
        return None
    try:
        return render(fields)
    except (TypeError, ValueError):  # a field of an unexpected type: still say what happened
        return event


def iso(ts: float) -> str:
    """``ts`` (epoch seconds) as ISO 8601 UTC with milliseconds."""
    moment = dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class LogTail:
    """Sentences read from the log, and where the next read starts."""

    lines: list[str]
    offset: int


def read_since(path: Path, offset: int) -> LogTail:
    """Sentences of the events logged after byte ``offset`` (from 0 if the log was replaced)."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, 2)
            start = offset if 0 <= offset <= size else 0
            log.seek(start)
            raw = log.read(MAX_READ)
    except OSError:
        return LogTail([], 0)
    complete = raw[: raw.rfind(b"\n") + 1]
    if not complete and len(raw) == MAX_READ:
        # One line longer than the window: skip it (its rest is no JSON line either), so the
        # relay goes on with the next events instead of reading the same window forever.
        return LogTail([], start + len(raw))
    return LogTail(_sentences(complete), start + len(complete))


def last(path: Path, count: int) -> list[str]:
    """The last ``count`` sentences of the log."""
    try:
        size = path.stat().st_size
    except OSError:
        return []
    return read_since(path, max(size - MAX_READ, 0)).lines[-count:]


def _sentences(raw: bytes) -> list[str]:
    lines: list[str] = []
    for line in raw.splitlines():
        try:
            entry: object = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        fields = cast("dict[str, object]", entry)
        message, time = fields.get("message"), fields.get("time")
        if isinstance(message, str) and message and isinstance(time, str):
            lines.append(f"{time} {message}")
    return lines
