"""The semaphore's order with a priority lane, as ``semaphore.ordered`` and the entry compute it.

A model store replays any interleaving of ordinary entries, priority entries and departures
(release, timeout, expiry) at increasing revisions; each priority entry is written with the
value ``priority_value`` gives it from a read of the store just before (the entry transaction
proves nothing changed in between). Over every sequence: at most k hold, a holder keeps holding
until it leaves, a priority key goes ahead of every ordinary key that was waiting when it came,
and priority keys keep FIFO among themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from rollingops.etcd_client import KeyValue
from rollingops.semaphore import Entry, ordered, priority_value


@dataclass
class Store:
    capacity: int
    revision: int = 0
    kvs: dict[str, KeyValue] = field(default_factory=dict)

    def order(self) -> list[Entry]:
        return ordered(list(self.kvs.values()))

    def holders(self) -> set[str]:
        return {entry.kv.key for entry in self.order()[: self.capacity]}

    def put(self, key: str, value: bytes) -> None:
        self.revision += 1
        self.kvs[key] = KeyValue(key, value, self.revision, self.revision, 0)

    def enter(self, key: str, priority: bool) -> None:
        value = priority_value(key, self.order(), self.capacity) if priority else key.encode()
        self.put(key, value)

    def leave(self, index: int) -> str | None:
        if not self.kvs:
            return None
        key = sorted(self.kvs)[index % len(self.kvs)]
        del self.kvs[key]
        self.revision += 1
        return key


steps = st.lists(
    st.one_of(
        st.tuples(st.just("ordinary"), st.just(0)),
        st.tuples(st.just("priority"), st.just(0)),
        st.tuples(st.just("leave"), st.integers(0, 50)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(capacity=st.integers(1, 4), steps=steps)
def test_holders_stay_priority_goes_ahead_of_waiters_and_k_bounds_holders(
    capacity: int, steps: list[tuple[str, int]]
) -> None:
    store = Store(capacity)
    overtaken: dict[str, set[str]] = {}
    """Priority key -> ordinary keys that were waiting when it entered."""
    priority_keys: list[str] = []
    for number, (kind, index) in enumerate(steps):
        before = store.holders()
        left = None
        if kind == "leave":
            left = store.leave(index)
        else:
            key = f"k{number:03d}"
            waiting = {e.kv.key for e in store.order()[capacity:] if not e.priority}
            store.enter(key, priority=kind == "priority")
            if kind == "priority":
                overtaken[key] = waiting
                priority_keys.append(key)
        after = store.holders()
        assert len(after) <= capacity
        assert before - {left} <= after, "a holder lost its place without leaving"
        assert len(after) == min(capacity, len(store.kvs)), "a free slot went unused"
        position = {e.kv.key: i for i, e in enumerate(store.order())}
        for key, ordinary in overtaken.items():
            for other in ordinary & position.keys():
                if key in position:
                    assert position[key] < position[other], f"{key} is behind {other}"
        present = [key for key in priority_keys if key in position]
        assert sorted(present, key=position.__getitem__) == present, "priority keys out of FIFO"


def test_an_unreadable_value_ranks_as_an_ordinary_key() -> None:
    kvs = [
        KeyValue("a", b"unit/0", 5, 5, 0),
        KeyValue("b", b'{"owner": "x", "after": "soon"}', 3, 3, 0),
        KeyValue("c", b'{"owner": "y", "after": 4}', 9, 9, 0),
    ]
    assert [e.kv.key for e in ordered(kvs)] == ["b", "c", "a"]
    assert [e.priority for e in ordered(kvs)] == [False, True, False]
    assert Entry.of(kvs[1]).owner == '{"owner": "x", "after": "soon"}'
