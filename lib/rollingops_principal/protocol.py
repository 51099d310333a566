"""Protocol v1 between a principal unit and its rollingops subordinate unit.

Both sides write their own unit databag of the container relation; each value is one JSON
document (never JSON inside a JSON string). The principal writes ``requests`` and ``results``;
the subordinate writes ``protocol``, ``granted``, ``state``, ``accepted``, ``rejected`` and
``finished``. ``docs/protocol.md`` is the human-readable form of this module.

Parsing is per item: one malformed request is rejected with a reason, the others go on.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

PROTOCOL_VERSION = "1"
MAX_REQUESTS = 32
MAX_KWARGS_BYTES = 32 * 1024
MAX_REPORTED = 32
"""How many rejected and finished entries the subordinate keeps in its bag."""

OperationId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
CallbackName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]
ResultName = Literal["release", "retry-release", "retry-hold"]
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
    max_retry: Annotated[int, Field(ge=0, le=1000)] | None = None
    requested_at: dt.datetime

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
    attempt: Annotated[int, Field(ge=1)]
    finished_at: dt.datetime


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


class Rejection(_Reported):
    """A request the subordinate refused, and why; ``id`` is as sent (may be empty)."""

    id: str
    reason: str


class Finished(_Reported):
    """A request that needs no more waiting for.

    ``done``: ran and released; ``dropped``: gave up after max-retry (``reason`` says why);
    ``merged``: identical to a request still waiting (``reason`` names it), so it runs as that one.
    """

    id: OperationId
    outcome: Literal["done", "dropped", "merged"]
    attempts: int
    reason: str = ""


class SubordinateState(_Reported):
    """What the subordinate is doing for this principal unit."""

    backend: BackendName | None
    status: Literal["idle", "waiting", "granted", "unavailable"]
    position: int | None = None
    """1-based place in the domain queue while waiting."""
    queue_length: int = 0
    message: str = ""


class PrincipalBag(_Model):
    """The principal unit's databag, parsed item by item."""

    requests: tuple[Request, ...] = ()
    results: tuple[Result, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    """Items that could not be parsed (filled by ``parse``, never written by the principal)."""

    @classmethod
    def parse(cls, data: Mapping[str, str]) -> PrincipalBag:
        """Parse what the principal wrote; collect what is invalid instead of failing."""
        requests, rejected = _parse_list(data.get("requests"), Request, "requests")
        results, bad_results = _parse_list(data.get("results"), Result, "results")
        if len(requests) > MAX_REQUESTS:
            rejected += [
                Rejection(id=r.id, reason=f"more than {MAX_REQUESTS} requests at once")
                for r in requests[MAX_REQUESTS:]
            ]
            requests = requests[:MAX_REQUESTS]
        return cls(
            requests=tuple(requests),
            results=tuple(results),
            rejected=tuple(rejected + bad_results),
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

    def to_databag(self) -> dict[str, str]:
        """Every key as one JSON document; ``granted`` is empty when nothing is granted."""
        return {
            "protocol": self.protocol,
            "granted": json.dumps(self.granted.dump()) if self.granted else "",
            "state": json.dumps(self.state.dump()),
            "accepted": json.dumps(list(self.accepted)),
            "rejected": json.dumps([r.dump() for r in self.rejected[-MAX_REPORTED:]]),
            "finished": json.dumps([f.dump() for f in self.finished[-MAX_REPORTED:]]),
        }

    @classmethod
    def from_databag(cls, data: Mapping[str, str]) -> SubordinateBag:
        """Read what a subordinate wrote; raises ``ValueError`` if it is not protocol v1."""
        if data.get("protocol") != PROTOCOL_VERSION:
            raise ValueError(f"unsupported protocol {data.get('protocol')!r}")
        # Only the protocol's own keys: every unit bag also carries Juju's (ingress-address...).
        keys = set(cls.model_fields) - {"protocol"}
        loaded = {key: json.loads(data[key]) for key in keys if data.get(key)}
        return cls.model_validate(loaded)


def _parse_list(
    raw: str | None, model: type[Request] | type[Result], key: str
) -> tuple[list[Any], list[Rejection]]:
    if not raw:
        return [], []
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as error:
        return [], [Rejection(id="", reason=f"{key} is not JSON: {error.msg}")]
    if not isinstance(items, list):
        return [], [Rejection(id="", reason=f"{key} must be a JSON list")]
    parsed: list[Any] = []
    rejected: list[Rejection] = []
    for item in items:
        try:
            parsed.append(model.model_validate(item))
        except ValidationError as error:
            rejected.append(Rejection(id=_item_id(item), reason=_short(error)))
    return parsed, rejected


def _item_id(item: object) -> str:
    if isinstance(item, dict):
        value = item.get("id")  # type: ignore[union-attr]
        if isinstance(value, str):
            return value[:64]
    return ""


def _short(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "request"
    return f"{where}: {first['msg']}"[:200]
