"""What a unit writes to the peer relation under the peer backend: each write is a hook on every
other unit, so a unit publishes its request and its operation's end, not its claim."""

from __future__ import annotations

from rollingops_sim.cluster import PEER_ID, SUB_APP
from test_rolling import events

from rollingops.models import UnitQueue


def test_a_unit_publishes_its_request_and_its_end_but_not_its_claim(simulate_without_etcd):
    cluster = simulate_without_etcd(3)
    seen: list[str] = []

    def published_by_unit_1() -> str:
        observer = cluster.units[f"{SUB_APP}/0"].state.get_relation(PEER_ID)
        return observer.peers_data.get(1, {}).get("queue", "")  # type: ignore[union-attr]

    def note_and_check() -> bool:
        value = published_by_unit_1()
        if not seen or seen[-1] != value:
            seen.append(value)
        return len(events(cluster, "end")) == 1

    note_and_check()
    op = cluster.request(1)
    cluster.run_until(note_and_check, timeout=60)
    cluster.settle()
    note_and_check()
    queues = [UnitQueue.model_validate_json(value) for value in seen]
    assert [[o.id for o in q.pending] for q in queues] == [[], [op], []]
    assert all(q.current is None for q in queues), "the claim was published"
    assert [(e.id, e.outcome.value) for e in queues[-1].history] == [(op, "done")]
    assert [r["op"] for r in events(cluster, "start")] == [op]
