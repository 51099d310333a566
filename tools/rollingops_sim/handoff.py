"""The end-to-end handoff A -> B on the simulator, milestone by milestone, from real events.

A handoff starts when principal A's callback ends and ends when principal B's callback starts,
B having waited for the lock. Every milestone is a timestamp something real wrote: the demo
principal's record (callback end and start), the simulator's timeline (each hook queued,
started, ended) and the workers' JSON logs (result applied, releasing, acquired, granted).
All are epoch seconds from one machine's clock.

The chain, in causal order (each milestone cannot happen before the previous one):

1. A's principal hook (``rollingops-relation-changed``, which ran the callback) returns: the
   result is in its bag.
2. A's subordinate ``rollingops-relation-changed`` starts; it forwards the result to etcd.
3. A's worker has applied the result (its watch saw it; one transaction).
4. A's worker releases the lock (``releasing``, just before the delete).
5. B's worker holds the lock (``acquired``: its watch saw the delete, one read).
6. B's worker has claimed its operation (``granted``: pause read and claim transaction).
7. B's ``juju-exec`` request reaches the simulator (a process start).
8. B's subordinate ``rollingops-lock-granted`` starts, then 9. returns: the grant is in its bag.
10. B's principal ``rollingops-relation-changed`` starts; 11. it starts the callback.

Milestone 2's hook goes on after its etcd write, so its end is no milestone: it runs while the
workers hand the lock over, and in the simulator B's hook waits for it (one hook at a time
across the cluster; in Juju only hooks of B's own machine would).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rollingops_sim.cluster import SUB_APP, Cluster, HookRecord

RELATION_CHANGED = "rollingops-relation-changed"
LOCK_GRANTED = "rollingops-lock-granted"

HOOK, QUEUE, WORKER, EXEC, MIXED = "hook", "queue", "worker", "juju-exec", "hook+worker"
"""What a segment is made of: running a hook, waiting to run one, the workers on etcd, the
juju-exec process that asks for a hook, or a hook whose etcd write the worker then acts on."""

SEGMENTS: tuple[tuple[str, str], ...] = (
    ("A principal hook returns (result in its bag)", HOOK),
    ("A subordinate relation-changed starts", QUEUE),
    ("A worker applied the result (hook's etcd write, watch, txn)", MIXED),
    ("A worker releases the lock", WORKER),
    ("B worker acquired (delete, watch, read)", WORKER),
    ("B worker granted (pause read, claim txn)", WORKER),
    ("B juju-exec request reaches the simulator", EXEC),
    ("B subordinate lock-granted starts", QUEUE),
    ("B subordinate lock-granted returns (grant in its bag)", HOOK),
    ("B principal relation-changed starts", QUEUE),
    ("B callback starts", HOOK),
)
"""Each segment ends at a milestone (named by it) and starts at the previous one."""


class MissingEventError(LookupError):
    """An event the chain needs is not in the records, timeline or logs."""


@dataclass(frozen=True)
class Handoff:
    """One handoff: the units, the milestones' times and the hooks on its critical path."""

    giver: str
    taker: str
    times: tuple[float, ...]
    """A's callback end, then one time per segment (``SEGMENTS``)."""
    path: tuple[HookRecord, ...]
    """A's principal hook, A's subordinate hook, B's subordinate hook, B's principal hook."""
    others: tuple[HookRecord, ...]
    """Hooks of other units or causes that ran between the first and the last milestone."""
    blocked: float
    """Seconds of the queue segments during which another hook was running."""

    @property
    def segments(self) -> tuple[float, ...]:
        """Seconds per segment; they sum to ``total``."""
        return tuple(b - a for a, b in itertools.pairwise(self.times))

    @property
    def total(self) -> float:
        """A's callback end -> B's callback start."""
        return self.times[-1] - self.times[0]

    def seconds_of(self, kind: str) -> float:
        """Seconds of the segments made of ``kind`` only (``QUEUE``, ``HOOK``...)."""
        return sum(s for s, (_, k) in zip(self.segments, SEGMENTS, strict=True) if k == kind)


def queued_round(cluster: Cluster, kwargs: dict[str, Any] | None = None) -> list[Handoff]:
    """Every unit queues one restart, all before the first grant; the round's handoffs.

    The domain is paused while the requests come in (in machine order), then resumed: every
    grant of the round but the first is then a handoff to a unit already waiting, and no
    request's hooks run in between. The first handoff is left out: the resume action's own
    hook already relays the first grant, so the worker's ``rollingops-lock-granted`` for it
    runs late, inside that handoff, ahead of the giver's result (not the steady state).
    """
    began, done = time.time(), _ends(cluster)
    leader = f"{SUB_APP}/0"
    cluster.action(leader, "pause", {"reason": "queue the round first"})
    machines = sorted({unit.machine for unit in cluster.units.values()})
    for machine in machines:
        cluster.wait_queued(machine, cluster.request(machine, kwargs=kwargs or {"seconds": 0}))
    cluster.action(leader, "resume")
    cluster.run_until(lambda: _ends(cluster) == done + len(machines), timeout=120)
    return handoffs(cluster, since=began)[1:]


def _ends(cluster: Cluster) -> int:
    return sum(r["event"] == "end" for r in cluster.records())


def handoffs(cluster: Cluster, since: float = 0.0) -> list[Handoff]:
    """Every handoff between two units whose callbacks started after ``since`` (epoch s).

    Consecutive grants in token order, from one unit to another unit whose worker was already
    waiting when the first released (so the lock went straight to it).
    """
    records = [r for r in cluster.records() if r["ts"] >= since]
    starts = sorted((r for r in records if r["event"] == "start"), key=lambda r: r["token"])
    ends = {(r["op"], r["token"]): r for r in records if r["event"] == "end"}
    logs = cluster.worker_logs()
    found: list[Handoff] = []
    for first, second in itertools.pairwise(starts):
        end = ends.get((first["op"], first["token"]))
        if end is None or first["unit"] == second["unit"]:
            continue
        handoff = _chain(cluster.timeline, logs, end, second)
        if handoff is not None:
            found.append(handoff)
    return found


def _chain(
    timeline: list[HookRecord],
    logs: dict[str, list[dict[str, Any]]],
    end: dict[str, Any],
    start: dict[str, Any],
) -> Handoff | None:
    """The handoff from ``end`` (A's record) to ``start`` (B's); ``None`` if B was not waiting."""
    giver, taker = _machine(end["unit"]), _machine(start["unit"])
    a_sub, b_sub = f"{SUB_APP}/{giver}", f"{SUB_APP}/{taker}"
    a_principal = _hook(timeline, end["unit"], lambda h: h.started <= end["ts"] <= h.ended)
    a_hook = _hook(timeline, a_sub, _named(RELATION_CHANGED, a_principal.ended))
    applied = _event(logs, a_sub, "result", a_hook.started, token=end["token"])
    releasing = _event(logs, a_sub, "releasing", applied["ts"], token=end["token"])
    granted = _event(logs, b_sub, "granted", releasing["ts"], token=start["token"])
    acquired = _last(logs, b_sub, "acquired", granted["ts"])
    waiting = _last(logs, b_sub, "waiting", acquired["ts"])
    if not waiting["ts"] <= releasing["ts"] <= acquired["ts"]:
        return None  # B entered after A let go: no handoff, an uncontended grant
    b_hook = _hook(timeline, b_sub, lambda h: h.hook == LOCK_GRANTED and h.queued >= granted["ts"])
    b_principal = _hook(timeline, start["unit"], _named(RELATION_CHANGED, b_hook.ended))
    times = (
        end["ts"],
        a_principal.ended,
        a_hook.started,
        applied["ts"],
        releasing["ts"],
        acquired["ts"],
        granted["ts"],
        b_hook.queued,
        b_hook.started,
        b_hook.ended,
        b_principal.started,
        start["ts"],
    )
    path = (a_principal, a_hook, b_hook, b_principal)
    others = tuple(
        h for h in timeline if h not in path and h.started < times[-1] and h.ended > times[0]
    )
    spans = itertools.pairwise(times)
    queues = [span for span, (_, kind) in zip(spans, SEGMENTS, strict=True) if kind == QUEUE]
    blocked = sum(_overlap(h, a, b) for h in timeline for a, b in queues)
    return Handoff(end["unit"], start["unit"], times, path, others, blocked)


def _machine(unit: str) -> int:
    return int(unit.rpartition("/")[2])


def _named(name: str, after: float) -> Callable[[HookRecord], bool]:
    return lambda h: h.hook == name and h.started >= after


def _hook(
    timeline: list[HookRecord], unit: str, match: Callable[[HookRecord], bool]
) -> HookRecord:
    """The first hook of ``unit`` that matches."""
    for hook in timeline:
        if hook.unit == unit and match(hook):
            return hook
    raise MissingEventError(f"no matching hook of {unit} in the timeline")


def _event(
    logs: dict[str, list[dict[str, Any]]], unit: str, name: str, after: float, token: int
) -> dict[str, Any]:
    """The first ``name`` event of ``unit``'s worker at or after ``after``, for ``token``."""
    for entry in logs.get(unit, []):
        if entry["event"] == name and entry["ts"] >= after and entry.get("token") == token:
            return entry
    raise MissingEventError(f"no {name} (token {token}) in {unit}'s worker log")


def _last(
    logs: dict[str, list[dict[str, Any]]], unit: str, name: str, before: float
) -> dict[str, Any]:
    """The last ``name`` event of ``unit``'s worker at or before ``before``."""
    for entry in reversed(logs.get(unit, [])):
        if entry["event"] == name and entry["ts"] <= before:
            return entry
    raise MissingEventError(f"no {name} before {before} in {unit}'s worker log")


def _overlap(hook: HookRecord, start: float, end: float) -> float:
    """Seconds of [start, end] during which ``hook`` ran."""
    return max(0.0, min(hook.ended, end) - max(hook.started, start))
