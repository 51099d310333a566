"""Protocol v1 models: strict about what principals send, lenient about what they read."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError
from rollingops_principal import PrincipalBag, Request, Result, SubordinateBag, SubordinateState
from rollingops_principal.protocol import MAX_LISTED, Grant, _Reported

NOW = "2026-11-25T10:00:00+00:00"


def test_subordinate_bag_round_trips_and_ignores_keys_it_does_not_know():
    bag = SubordinateBag(
        granted=Grant(
            id="a",
            callback="restart",
            kwargs={"x": [1]},
            attempt=1,
            token=9,
            granted_at=NOW,
            backend="etcd",
        ),
        state=SubordinateState(backend="etcd", status="granted"),
        accepted=("a",),
    )
    juju_keys = {"ingress-address": "10.0.0.1", "egress-subnets": "10.0.0.1/32"}
    data = bag.to_databag() | {"future-key": json.dumps({"new": True})} | juju_keys
    data["state"] = json.dumps(json.loads(data["state"]) | {"future-field": 1})
    assert SubordinateBag.from_databag(data) == bag


def test_an_unknown_protocol_version_is_refused():
    data = SubordinateBag(state=SubordinateState(backend=None, status="idle")).to_databag()
    with pytest.raises(ValueError, match="unsupported protocol '2'"):
        SubordinateBag.from_databag(data | {"protocol": "2"})


def test_principal_bag_parses_item_by_item():
    good = {"id": "a", "callback": "restart", "requested-at": NOW}
    bad = {"id": "b", "callback": "restart", "requested-at": NOW, "surprise": 1}
    parsed = PrincipalBag.parse({"requests": json.dumps([good, bad, "junk"])})
    assert [r.id for r in parsed.requests] == ["a"]
    assert [(r.id, r.reason.split(":")[0]) for r in parsed.rejected] == [
        ("b", "surprise"),
        ("", "request"),
    ]


def deep_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def test_kwargs_built_in_python_are_bounded_in_depth_without_recursion():
    """What the library does in ``request``: a 5000-deep dict is refused with a reason."""
    Request(id="a", callback="restart", kwargs=deep_dict(32), requested_at=NOW)
    with pytest.raises(ValidationError) as refused:
        Request(id="a", callback="restart", kwargs=deep_dict(5000), requested_at=NOW)
    assert refused.value.errors()[0]["msg"] == "Value error, kwargs nested deeper than 32"


@pytest.mark.parametrize(
    ("model", "item"),
    [
        (Request, {"id": "a", "callback": "restart", "requested-at": "2026-11-25T10:00:00"}),
        (Result, {"id": "a", "result": "release", "attempt": 1, "finished-at": "2026-11-25"}),
    ],
)
def test_timestamps_without_a_timezone_are_refused(model, item):
    with pytest.raises(ValidationError, match="Input should have timezone info"):
        model.model_validate(item)


def test_requested_at_keeps_its_instant():
    request = Request.model_validate(
        {"id": "a", "callback": "restart", "requested-at": "2026-11-25T12:00:00+02:00"}
    )
    assert request.requested_at == dt.datetime(2026, 11, 25, 10, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("value", ["5", True, 5.0, "true"])
def test_integers_must_be_json_integers(value):
    item = {"id": "a", "callback": "restart", "requested-at": NOW, "max-retry": value}
    result = {"id": "a", "result": "release", "attempt": value, "finished-at": NOW}
    for model, data in ((Request, item), (Result, result)):
        with pytest.raises(ValidationError, match="Input should be a valid integer"):
            model.model_validate(data)


def test_a_reason_survives_a_long_location():
    key = "x" * 500
    parsed = PrincipalBag.parse(
        {"requests": json.dumps([{"id": "a", "callback": "c", "requested-at": NOW, key: 1}])}
    )
    (rejection,) = parsed.rejected
    assert rejection.reason == "x" * 59 + "…: Extra inputs are not permitted"


def test_a_cut_id_is_never_a_valid_id():
    parsed = PrincipalBag.parse({"requests": json.dumps([{"id": "a" * 100}])})
    assert parsed.rejected[0].id == "a" * 63 + "…"
    assert parsed.listed == frozenset({"a" * 63 + "…"})


def test_the_bag_lists_every_id_valid_or_not_and_none_when_unreadable():
    good = {"id": "a", "callback": "restart", "requested-at": NOW}
    parsed = PrincipalBag.parse({"requests": json.dumps([good, {"id": "b"}, 7])})
    assert parsed.listed == frozenset({"a", "b"})
    assert PrincipalBag.parse({}).listed == frozenset()
    assert PrincipalBag.parse({"requests": "[" * 65}).listed is None
    assert PrincipalBag.parse({"requests": "{}"}).listed is None
    assert PrincipalBag().listed is None


def test_more_items_than_a_principal_may_list_refuse_the_list():
    items = [{"id": f"r{n}"} for n in range(MAX_LISTED + 1)]
    parsed = PrincipalBag.parse({"requests": json.dumps(items)})
    assert parsed.listed is None
    assert [r.reason for r in parsed.rejected] == [
        f"requests lists {MAX_LISTED + 1} items, more than {MAX_LISTED}:"
        " prune the ids found in accepted, rejected or finished"
    ]


def test_a_subordinate_bag_too_deep_is_a_value_error_not_a_crash():
    data = SubordinateBag(state=SubordinateState(backend=None, status="idle")).to_databag()
    with pytest.raises(ValueError, match="granted nested deeper than 64"):
        SubordinateBag.from_databag(data | {"granted": "[" * 100_000})
    with pytest.raises(ValueError, match="state is not JSON: NaN is not a JSON number"):
        SubordinateBag.from_databag(data | {"state": '{"queue-length": NaN}'})


def test_a_finished_outcome_from_a_newer_subordinate_is_left_out_not_fatal():
    """New outcomes are an additive change: a reader ignores what it does not know."""
    data = {
        "protocol": "1",
        "state": json.dumps({"backend": "etcd", "status": "idle"}),
        "finished": json.dumps(
            [
                {"id": "op1", "outcome": "teleported", "attempts": 1},
                {"id": "op2", "outcome": "done", "attempts": 1},
            ]
        ),
    }
    bag = SubordinateBag.from_databag(data)
    assert [f.id for f in bag.finished] == ["op2"]


class _GrantOfAnOlderReader(_Reported):
    """``Grant`` as a principal library from before ``rerun`` reads it."""

    id: str
    callback: str
    kwargs: dict[str, Any]
    attempt: int
    token: int
    granted_at: dt.datetime
    backend: str


def test_rerun_is_additive_in_both_directions():
    older_subordinate = {
        "id": "a",
        "callback": "restart",
        "kwargs": {},
        "attempt": 1,
        "token": 9,
        "granted-at": NOW,
        "backend": "etcd",
    }
    assert Grant.model_validate(older_subordinate).rerun is False, "no mark: a first grant"
    rerun = Grant.model_validate(older_subordinate | {"rerun": True})
    assert rerun.dump()["rerun"] is True
    assert _GrantOfAnOlderReader.model_validate(rerun.dump()).token == 9
    data = SubordinateBag(
        granted=rerun, state=SubordinateState(backend="etcd", status="granted")
    ).to_databag()
    assert SubordinateBag.from_databag(data).granted == rerun
