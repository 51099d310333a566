"""Protocol v1 models: strict about what principals send, lenient about what they read."""

from __future__ import annotations

import json

import pytest
from rollingops_principal import PrincipalBag, SubordinateBag, SubordinateState
from rollingops_principal.protocol import Grant

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
