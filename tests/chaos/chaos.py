"""A seeded fault-injection run: real workers on a three-member etcd, faults at random.

Each unit is a real worker process (in its own session, so a signal reaches it and the fake
charm it started, as a machine freeze or crash would). Operations arrive at random, some with
callbacks longer than the lease TTL. Faults, drawn from one seeded generator:

- ``worker-kill``: SIGKILL the unit's process group; restarted after a while (systemd would);
- ``worker-pause``: SIGSTOP the group for up to twice the lease TTL, then SIGCONT;
- ``member-kill`` / ``leader-kill``: SIGKILL one etcd member (at most one down), restarted later;
- ``member-hang``: SIGSTOP one member for a few seconds (a hung member: TCP stays open);
- ``full-restart``: every member stopped and started again (once per run at most).

Workers that exit (etcd gone past their deadline) are restarted too. After the faults stop
everything is resumed and the run waits for every queue to drain; then ``checker.judge``
gives the verdict. ``python tests/chaos/run.py`` runs it by hand (soak: more seconds, seeds).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker import Hold, Verdict, judge
from testbed.etcd import EtcdCluster, EtcdMember
from testbed.workers import WorkerFarm, operation, settings_for

from rollingops.etcd_client import EtcdClient, EtcdError

REQUEST_BOUND = 1.0
"""Seconds one request of the run may take; one that cannot be made by then is not made."""
FAULTS = ("worker-kill", "worker-pause", "member-kill", "leader-kill", "member-hang")


@dataclass(frozen=True)
class ChaosConfig:
    """How big and how long a run is."""

    seed: int
    seconds: float = 40.0
    units: int = 6
    capacity: int = 1
    lease_ttl: int = 3
    fault_gap: tuple[float, float] = (1.0, 3.0)
    op_gap: tuple[float, float] = (0.2, 0.8)
    drain_timeout: float = 120.0
    """Seconds the drain may go without an operation leaving a queue (a stuck lock)."""


@dataclass
class _Pending:
    """A fault to undo at ``due``."""

    due: float
    undo: Callable[[], None]
    what: str


@dataclass
class ChaosReport:
    """The verdict and the figures of one run."""

    config: ChaosConfig
    verdict: Verdict
    faults: Counter[str]
    requested: int
    outcomes: Counter[str]
    drained_in: float
    restarts: int

    def lines(self) -> list[str]:
        faults = ", ".join(f"{kind} {count}" for kind, count in sorted(self.faults.items()))
        outcomes = ", ".join(f"{kind} {count}" for kind, count in sorted(self.outcomes.items()))
        return [
            f"seed {self.config.seed}: {self.config.units} workers, k={self.config.capacity}, "
            f"ttl {self.config.lease_ttl}s, {self.config.seconds:.0f}s of faults",
            f"  faults: {faults} ({sum(self.faults.values())} in all)",
            f"  ops: {self.requested} requested; outcomes: {outcomes}",
            f"  {self.verdict.summary()}",
            f"  drained {self.drained_in:.1f}s after the last fault; "
            f"{self.restarts} worker restarts",
        ]


@dataclass
class ChaosRun:
    """One run against ``cluster``; ``run()`` returns its report."""

    cluster: EtcdCluster
    root: Path
    config: ChaosConfig
    rng: random.Random = field(init=False)
    farm: WorkerFarm = field(init=False)
    pending: list[_Pending] = field(default_factory=list[_Pending])
    faults: Counter[str] = field(default_factory=Counter[str])
    requested: set[str] = field(default_factory=set[str])
    restarts: int = 0
    _down_member: EtcdMember | None = None
    _stopped_units: set[str] = field(default_factory=set[str])
    _full_restart_done: bool = False

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.root.mkdir(parents=True, exist_ok=True)
        self.farm = WorkerFarm(self.cluster, self.root)

    @property
    def units(self) -> list[str]:
        return [f"app/{n}" for n in range(self.config.units)]

    def _start(self, unit: str) -> None:
        self.farm.start(
            unit,
            lease_ttl=self.config.lease_ttl,
            max_concurrent=self.config.capacity,
            failure_deadline=5.0,
            new_session=True,
        )

    def _signal(self, unit: str, signum: signal.Signals) -> None:
        process = self.farm.processes[unit]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    def _log_fault(self, kind: str, **fields: Any) -> None:
        self.faults[kind] += 1
        with (self.root / "faults.jsonl").open("a") as out:
            out.write(json.dumps({"ts": time.time(), "fault": kind, **fields}) + "\n")

    # -- faults -----------------------------------------------------------------------------

    def _worker_kill(self) -> None:
        unit = self.rng.choice([u for u in self.units if u not in self._stopped_units])
        self._signal(unit, signal.SIGKILL)
        self.farm.processes[unit].wait(timeout=10)
        self._stopped_units.add(unit)
        self._log_fault("worker-kill", unit=unit)

        def revive() -> None:
            self._stopped_units.discard(unit)
            self._start(unit)
            self.restarts += 1

        self._later(self.rng.uniform(0.5, 3.0), revive, f"restart {unit}")

    def _worker_pause(self) -> None:
        unit = self.rng.choice([u for u in self.units if u not in self._stopped_units])
        self._signal(unit, signal.SIGSTOP)
        self._stopped_units.add(unit)
        self._log_fault("worker-pause", unit=unit)

        def resume() -> None:
            self._signal(unit, signal.SIGCONT)
            self._stopped_units.discard(unit)

        self._later(self.rng.uniform(0.5, 2 * self.config.lease_ttl), resume, f"resume {unit}")

    def _member_fault(self, kind: str) -> None:
        if self._down_member is not None:
            return
        running = [m for m in self.cluster.members if m.is_running and not m.is_paused]
        if len(running) < len(self.cluster.members):
            return
        member = self.cluster.leader() if kind == "leader-kill" else self.rng.choice(running)
        self._down_member = member
        self._log_fault(kind, member=member.name)
        if kind == "member-hang":
            member.pause()
            self._later(self.rng.uniform(2.0, 8.0), lambda: self._revive_member(member), "hang")
        else:
            member.kill()
            self._later(self.rng.uniform(1.0, 5.0), lambda: self._revive_member(member), "kill")

    def _revive_member(self, member: EtcdMember) -> None:
        if member.is_paused:
            member.resume()
        else:
            member.restart(wait=False)
        self._down_member = None

    def _full_restart(self) -> None:
        self._full_restart_done = True
        self._log_fault("full-restart")
        for member in self.cluster.members:
            if member.is_paused:
                member.resume()
            member.kill()
        self._down_member = None
        for member in self.cluster.members:
            member.restart(wait=False)
        self.cluster.wait_ready(timeout=60)

    def _inject(self) -> None:
        kind = self.rng.choice([*FAULTS, "full-restart"])
        if kind == "full-restart":
            if self._full_restart_done or self._down_member is not None:
                return
            self._full_restart()
        elif kind == "worker-kill":
            self._worker_kill()
        elif kind == "worker-pause":
            self._worker_pause()
        else:
            self._member_fault(kind)

    def _later(self, delay: float, undo: Callable[[], None], what: str) -> None:
        self.pending.append(_Pending(time.monotonic() + delay, undo, what))

    def _undo_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        for item in sorted(self.pending, key=lambda p: p.due):
            if everything or item.due <= now:
                self.pending.remove(item)
                item.undo()

    def _restart_exited(self) -> None:
        for unit in self.units:
            process = self.farm.processes[unit]
            if unit not in self._stopped_units and process.poll() is not None:
                self._start(unit)
                self.restarts += 1

    # -- work -------------------------------------------------------------------------------

    def _request(self, number: int) -> None:
        unit = self.rng.choice(self.units)
        long = self.rng.random() < 0.1
        hold = (
            self.rng.uniform(1.0, 1.5) * self.config.lease_ttl
            if long
            else self.rng.uniform(0, 0.3)
        )
        op_id = f"op{number}"
        try:
            # A short bound: a hung or dead member must not hold up the run's loop, or faults
            # (injected between requests) come too rarely to mean anything.
            with EtcdClient(settings_for(self.cluster, total_timeout=REQUEST_BOUND)) as client:
                # A unique kwarg: identical waiting requests are merged by design.
                self.farm.enqueue(client, unit, operation(op_id, n=number, hold=round(hold, 3)))
        except EtcdError:
            return  # etcd unreachable right now: the request was not made
        except ValueError:
            pass  # "already queued": a retried transaction whose first try went through
        self.requested.add(op_id)

    def run(self) -> ChaosReport:
        for unit in self.units:
            self._start(unit)
        end = time.monotonic() + self.config.seconds
        next_fault = time.monotonic() + self.rng.uniform(*self.config.fault_gap)
        number = 0
        while time.monotonic() < end:
            self._undo_due()
            self._restart_exited()
            if time.monotonic() >= next_fault:
                self._inject()
                next_fault = time.monotonic() + self.rng.uniform(*self.config.fault_gap)
            number += 1
            self._request(number)
            time.sleep(self.rng.uniform(*self.config.op_gap))
        self._undo_due(everything=True)
        calm = time.monotonic()
        self.cluster.wait_ready(timeout=60)
        self._drain()
        drained_in = time.monotonic() - calm
        return self._report(drained_in)

    def _drain(self) -> None:
        """Wait for every queue to empty; give up after ``drain_timeout`` without progress.

        A stuck lock is one under which nothing ends any more, not a slow one: on a loaded
        machine every operation costs seconds of process start-up (CI, other tests running).
        """
        left, deadline = None, time.monotonic() + self.config.drain_timeout
        while time.monotonic() < deadline:
            self._restart_exited()
            queues = self._queues().values()
            now_left = sum(len(q.pending) + (q.current is not None) for q in queues)
            if not now_left:
                return
            if left is None or now_left < left:
                left, deadline = now_left, time.monotonic() + self.config.drain_timeout
            time.sleep(0.5)

    def _queues(self) -> dict[str, Any]:
        with EtcdClient(settings_for(self.cluster, total_timeout=10.0)) as client:
            return {u: self.farm.store(client, u).load().queue for u in self.units}

    def _report(self, drained_in: float) -> ChaosReport:
        queues = self._queues()
        outcomes: dict[str, list[str]] = {}
        for queue in queues.values():
            for entry in queue.history:
                outcomes.setdefault(entry.id, []).append(entry.outcome.value)
        kills = self._kills()
        verdict = judge(
            holds(self.farm.records(), kills, self._grants()),
            self.config.capacity,
            self._lock_losses(),
            self.requested,
            outcomes,
            kills=kills,
        )
        return ChaosReport(
            self.config,
            verdict,
            self.faults,
            len(self.requested),
            Counter(o for found in outcomes.values() for o in found),
            drained_in,
            self.restarts,
        )

    def _grants(self) -> dict[tuple[str, str, int, int], list[float]]:
        """When each worker granted (unit, op, attempt, token), from its log."""
        grants: dict[tuple[str, str, int, int], list[float]] = {}
        for unit in self.units:
            for line in self.farm.log(unit):
                if line["event"] == "granted":
                    key = (unit, line["op"], line["attempt"], line["token"])
                    grants.setdefault(key, []).append(float(line["ts"]))
        return grants

    def _lock_losses(self) -> dict[str, list[float]]:
        losses: dict[str, list[float]] = {}
        for unit in self.units:
            for line in self.farm.log(unit):
                if line["event"] == "lock-lost":
                    losses.setdefault(unit, []).append(float(line["ts"]))
        return losses

    def _kills(self) -> dict[str, list[float]]:
        kills: dict[str, list[float]] = {}
        path = self.root / "faults.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        for line in map(json.loads, lines):
            if line["fault"] == "worker-kill":
                kills.setdefault(line["unit"], []).append(float(line["ts"]))
        return kills

    def close(self) -> None:
        self._undo_due(everything=True)
        self.farm.stop_all()


def holds(
    records: list[dict[str, Any]],
    kills: dict[str, list[float]],
    grants: dict[tuple[str, str, int, int], list[float]],
) -> list[Hold]:
    """Pair the fake charm's start and end records; a killed callback ends at its kill.

    Each hold is dated from its worker's last ``granted`` of that key before it started.
    """
    ends = {
        (r["unit"], r["op"], r["attempt"], r["token"]): float(r["ts"])
        for r in records
        if r.get("event") == "end"
    }
    found: list[Hold] = []
    for record in (r for r in records if r.get("event") == "start"):
        key = (record["unit"], record["op"], record["attempt"], record["token"])
        start = float(record["ts"])
        end = ends.get(key)
        if end is None:
            after = [ts for ts in kills.get(record["unit"], []) if ts >= start]
            end = min(after) if after else float("inf")
        granted = max((ts for ts in grants.get(key, []) if ts <= start), default=None)
        found.append(Hold(*key, start, end, rerun=record["rerun"], granted=granted))
    return found
