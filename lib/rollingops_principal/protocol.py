"""Protocol v1 between a principal unit and its rollingops subordinate unit.

Both sides write their own unit databag of the container relation; each value is one JSON
document (never JSON inside a JSON string). The principal writes ``requests`` and ``results``;
the subordinate writes ``protocol``, ``granted``, ``state``, ``accepted``, ``rejected`` and
``finished``. ``docs/protocol.md`` is the human-readable form of this module.

Parsing is per item: one malformed request is rejected with a reason, the others go on.
Each value the other side wrote is untrusted JSON: it is parsed with size and depth limits
(``untrusted_json``) before any model sees it, so no value can crash a hook.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    ValidationError,
    field_validator,
)

from .untrusted_json import loads, value_depth

PROTOCOL_VERSION = "1"
MAX_REQUESTS = 32
"""New requests taken at once; requests already taken that are still listed do not count."""
MAX_KWARGS_BYTES = 32 * 1024
MAX_KWARGS_DEPTH = 32
"""How deep kwargs may nest (``{}`` is 1): deep enough for any real argument, and far from
the recursion limits of ``json`` and pydantic."""
MAX_REPORTED = 32
"""How many rejected and finished entries the subordinate keeps in its bag."""
MAX_LISTED = 512
"""Most items a ``requests`` list may hold, taken or not. The subordinate remembers every
listed id it has taken (rule 1), so this also bounds what it remembers."""
MAX_DOCUMENT_DEPTH = 2 * MAX_KWARGS_DEPTH
"""Nesting allowed in one databag value before parsing: a request nests kwargs two levels
down, so a request with kwargs a little too deep is still parsed and rejected on its own."""
MAX_REQUESTS_BYTES = MAX_REQUESTS * (3 * MAX_KWARGS_BYTES + 1024)
"""Largest ``requests`` value: 32 requests of the largest kwargs, as the library writes them.
Compact UTF-8 is what ``MAX_KWARGS_BYTES`` counts; ``json.dumps``' default ASCII escapes and
spaces make a value at most three times that."""
MAX_RESULTS_BYTES = 64 * 1024
"""Largest ``results`` value: a result is about 150 bytes, the library writes one."""
MAX_SUBORDINATE_VALUE_BYTES = 3 * MAX_KWARGS_BYTES + 32 * 1024
"""Largest value of the subordinate's bag (``granted`` carries the kwargs, ASCII-escaped)."""

OperationId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
CallbackName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]
ResultName = Literal["release", "retry-release", "retry-hold"]
SocketPath = Annotated[str, Field(pattern=r"^/[^\x00]{0,4095}$")]
BackendName = Literal["etcd", "peer"]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Model(BaseModel):
    """What the principal writes: unknown fields are refused (they could change meaning)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=_kebab, populate_by_name=True
    )

    def dump(self) -> dict[str, Any]:
        """JSON-ready dict with the protocol's kebab-case keys."""
        return self.model_dump(mode="json", by_alias=True)


class Request(_Model):
    """One operation the principal asks to run under the lock."""

    id: OperationId
    callback: CallbackName
    kwargs: dict[str, JsonValue] = Field(default_factory=dict[str, JsonValue])
    max_retry: Annotated[StrictInt, Field(ge=0, le=1000)] | None = None
    """A JSON integer: ``"5"`` or ``true`` are refused, not read as 5 or 1."""
    requested_at: AwareDatetime
    """Naive timestamps are refused: the queue orders requests of every unit by this time,
    and a naive one cannot be compared with an aware one."""

    @field_validator("kwargs", mode="before")
    @classmethod
    def _shallow(cls, kwargs: object) -> object:
        """Before pydantic walks it (recursively), and for kwargs built in Python too."""
        if value_depth(kwargs) > MAX_KWARGS_DEPTH:
            raise ValueError(f"kwargs nested deeper than {MAX_KWARGS_DEPTH}")
        return kwargs

    @field_validator("kwargs")
    @classmethod
    def _bounded(cls, kwargs: dict[str, JsonValue]) -> dict[str, JsonValue]:
        size = len(json.dumps(kwargs, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_KWARGS_BYTES:
            raise ValueError(f"kwargs are {size} bytes, more than {MAX_KWARGS_BYTES}")
        return kwargs


class Result(_Model):
    """The principal's report on one attempt of a granted operation.

    ``attempt`` ties the result to the grant it answers, so a ``retry-hold`` result still in
    the bag is never taken for the answer to the next attempt.
    """

    id: OperationId
    result: ResultName
    attempt: Annotated[StrictInt, Field(ge=1)]
    finished_at: AwareDatetime


class _Reported(_Model):
    """What the subordinate writes: unknown fields are ignored (additive changes, same version)."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=_kebab, populate_by_name=True
    )


class Grant(_Reported):
    """The operation the principal may run now, with the lock's fencing token."""

    id: OperationId
    callback: CallbackName
    kwargs: dict[str, JsonValue]
    attempt: int
    token: int
    granted_at: dt.datetime
    backend: BackendName
    rerun: bool = False
    """This attempt was granted before, to a subordinate worker that died before the result
    came, so its callback may have run already, wholly or in part (at-least-once). Added in v1
    (additive: an older subordinate never writes it, so a grant without it is a first grant;
    an older principal ignores it)."""


class Rejection(_Reported):
    """A request the subordinate refused, and why; ``id`` is as sent (may be empty)."""

    id: str
    reason: str


FinishedOutcome = Literal[
    "done", "dropped", "merged", "lock-lost", "revoked", "hook-failed", "cancelled"
]
KNOWN_OUTCOMES = frozenset(get_args(FinishedOutcome))


class Finished(_Reported):
    """A request that needs no more waiting for.

    ``done``: ran and released; ``dropped``: gave up after max-retry (``reason`` says why);
    ``merged``: identical to a request still waiting (``reason`` names it), so it runs as that one;
    ``lock-lost``: the subordinate lost the lock while the operation ran (its fencing token is
    stale; it is not run again by itself); ``revoked``: the operator force-released the lock while
    the operation ran (as ``lock-lost``: the token is stale, the operation is not run again by
    itself); ``hook-failed``: the grant could not be delivered (the subordinate's hook kept
    failing), so the lock went to the next unit; ``cancelled``: the operator cancelled it
    (``reason`` says why).

    The principal library announces ``lock-lost`` and ``revoked`` with its ``lock_lost`` event.
    """

    id: OperationId
    outcome: FinishedOutcome
    """One of the outcomes above. A newer subordinate may add outcomes (an additive change):
    ``SubordinateBag.from_databag`` leaves out entries with one it does not know."""
    attempts: int
    reason: str = ""


class SubordinateState(_Reported):
    """What the subordinate is doing for this principal unit, as of its last write.

    The subordinate rewrites its bag only in its own hooks and only when there is something to
    act on (a grant, a rejection, an operation that ended other than ``done``), which keeps an
    operation at 5 hooks: a request it took is not announced, and an operation the principal
    released ends in the subordinate's worker with no hook at all. So this state, as written,
    can be stale (``idle`` while a request waits, ``granted`` after the release);
    ``RollingOps.state`` corrects ``status`` and ``position`` with what the principal knows.
    """

    backend: BackendName | None
    status: Literal["idle", "waiting", "granted", "unavailable"]
    position: int | None = None
    """1-based place in the domain queue while waiting (as of the subordinate's last write)."""
    queue_length: int = 0
    message: str = ""


class PrincipalBag(_Model):
    """The principal unit's databag, parsed item by item."""

    requests: tuple[Request, ...] = ()
    results: tuple[Result, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    """Requests that could not be parsed, or the whole ``requests`` value when it could not
    be (filled by ``parse``, never written by the principal)."""
    rejected_results: tuple[Rejection, ...] = ()
    """Results that could not be parsed (filled by ``parse``)."""
    listed: frozenset[str] | None = None
    """Every id in the ``requests`` list, valid or not; ``None`` when unknown (no principal,
    or a value that could not be parsed). Ids no longer listed are ids the principal pruned."""

    @classmethod
    def parse(cls, data: Mapping[str, str]) -> PrincipalBag:
        """Parse what the principal wrote; collect what is invalid instead of failing.

        Never raises, whatever ``data`` holds. ``MAX_REQUESTS`` is applied by the subordinate
        to the requests it has not taken yet, not here.
        """
        requests, rejected, listed = _parse_list(
            data.get("requests"), Request, "requests", MAX_REQUESTS_BYTES
        )
        results, bad_results, _ = _parse_list(
            data.get("results"), Result, "results", MAX_RESULTS_BYTES
        )
        return cls(
            requests=tuple(requests),
            results=tuple(results),
            rejected=tuple(rejected),
            rejected_results=tuple(bad_results),
            listed=listed,
        )

    def to_databag(self) -> dict[str, str]:
        """What a principal writes (used by the principal library and by tests)."""
        return {
            "requests": json.dumps([r.dump() for r in self.requests]),
            "results": json.dumps([r.dump() for r in self.results]),
        }


class SubordinateBag(_Reported):
    """The subordinate unit's databag."""

    protocol: Literal["1"] = PROTOCOL_VERSION
    granted: Grant | None = None
    state: SubordinateState
    accepted: tuple[OperationId, ...] = ()
    """Ids of the principal's requests that are queued or running: they may be pruned."""
    rejected: tuple[Rejection, ...] = ()
    finished: tuple[Finished, ...] = ()
    sync_socket: SocketPath | None = None
    """Where the worker serves synchronous holds (``RollingOps.sync_lock``); absent while it
    cannot (peer backend, etcd not ready). Added in v1 (additive: older readers ignore it)."""

    def to_databag(self) -> dict[str, str]:
        """Every key as one JSON document; ``granted`` is empty when nothing is granted."""
        return {
            "sync-socket": json.dumps(self.sync_socket) if self.sync_socket else "",
            "protocol": self.protocol,
            "granted": json.dumps(self.granted.dump()) if self.granted else "",
            "state": json.dumps(self.state.dump()),
            "accepted": json.dumps(list(self.accepted)),
            "rejected": json.dumps([r.dump() for r in self.rejected[-MAX_REPORTED:]]),
            "finished": json.dumps([f.dump() for f in self.finished[-MAX_REPORTED:]]),
        }

    @classmethod
    def from_databag(cls, data: Mapping[str, str]) -> SubordinateBag:
        """Read what a subordinate wrote; raises ``ValueError`` if it is not protocol v1.

        The subordinate is another application too: its values are parsed with limits.
        """
        if data.get("protocol") != PROTOCOL_VERSION:
            raise ValueError(f"unsupported protocol {str(data.get('protocol'))[:16]!r}")
        # Only the protocol's own keys: every unit bag also carries Juju's (ingress-address...).
        keys = {field.alias or name for name, field in cls.model_fields.items()} - {"protocol"}
        loaded = {
            key: loads(
                data[key],
                key,
                max_bytes=MAX_SUBORDINATE_VALUE_BYTES,
                max_depth=MAX_DOCUMENT_DEPTH,
            )
            for key in keys
            if data.get(key)
        }
        finished = loaded.get("finished")
        if isinstance(finished, list):
            loaded["finished"] = [
                entry
                for entry in cast("list[Any]", finished)
                if not isinstance(entry, dict)
                or cast("dict[str, Any]", entry).get("outcome") in KNOWN_OUTCOMES
            ]
        return cls.model_validate(loaded)


def _parse_list(
    raw: str | None, model: type[Request] | type[Result], key: str, max_bytes: int
) -> tuple[list[Any], list[Rejection], frozenset[str] | None]:
    """Valid items, rejections, and the ids listed (``None`` if the list itself is refused)."""
    if not raw:
        return [], [], frozenset()
    try:
        items = loads(raw, key, max_bytes=max_bytes, max_depth=MAX_DOCUMENT_DEPTH)
    except ValueError as error:
        return [], [Rejection(id="", reason=str(error))], None
    if not isinstance(items, list):
        return [], [Rejection(id="", reason=f"{key} must be a JSON list")], None
    entries = cast("list[object]", items)
    if len(entries) > MAX_LISTED:
        reason = (
            f"{key} lists {len(entries)} items, more than {MAX_LISTED}:"
            " prune the ids found in accepted, rejected or finished"
        )
        return [], [Rejection(id="", reason=reason)], None
    parsed: list[Any] = []
    rejected: list[Rejection] = []
    listed: set[str] = set()
    for item in entries:
        item_id = _item_id(item)
        if item_id:
            listed.add(item_id)
        try:
            parsed.append(model.model_validate(item))
        except ValidationError as error:
            rejected.append(Rejection(id=item_id, reason=_short(error)))
    return parsed, rejected, frozenset(listed)


def _item_id(item: object) -> str:
    """The item's id as written, for its rejection; a cut one ends in "…", never a valid id."""
    if isinstance(item, dict):
        value = item.get("id")  # type: ignore[union-attr]
        if isinstance(value, str):
            return value if len(value) <= 64 else value[:63] + "…"
    return ""


def _short(error: ValidationError) -> str:
    """``where: why``, bounded, and the reason (``why``) is never what gets cut.

    ``where`` is cut, to 60 characters: it can hold a key the principal chose, of any length.
    ``why`` is pydantic's message or ours, short by construction and the part worth reading;
    its 200-character bound only guards against a future long message.
    """
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "request"
    if len(where) > 60:
        where = where[:59] + "…"
    return f"{where}: {first['msg'][:200]}"
