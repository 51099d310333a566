"""Verdicts over what a chaos run recorded: holds, tokens, lock losses and the fate of every op.

Input is plain data (what the fake charm and the workers wrote), so the checker is tested on its
own with made-up histories (``test_checker.py``) before it judges real runs.

- A **hold** is one run of an operation's callback: unit, op, attempt, token, start and end.
- Two holds **overlap** when both ran at one instant with k already running. An overlap is
  **excused** when the holder with the older fencing token lost its lock and was told so (its
  worker logged ``lock-lost`` after granting that hold), whichever of the two started first:
  the protected resource, having seen the newer token, can refuse it. A holder that started late
  with an old token is the process paused after its claim that no lock service can stop
  (docs/reliability.md); its worker may learn of the loss before the callback even starts, the
  hook being on its way already.
  Anything else is a **violation**.
- Tokens must strictly increase in grant order within the domain, except for such a stale
  holder that was told it lost its lock.
- Every requested op must end exactly once (an outcome in its unit's history), and never start
  twice for the same attempt, with two exceptions: the earlier run lost its lock (its worker
  logged ``lock-lost``), or its worker was killed after it began and the later run is that
  unit's re-grant after the restart, marked ``rerun`` by the worker, under a higher token. A
  re-run after a crash is at-least-once by nature (docs/engine.md): the principal is told, so
  the checker accepts it only when it was told.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise


@dataclass(frozen=True)
class Hold:
    """One run of a callback, as the fake charm recorded it."""

    unit: str
    op: str
    attempt: int
    token: int
    start: float
    end: float
    rerun: bool = False
    """The grant said this attempt was granted before (a restarted worker's re-grant)."""
    granted: float | None = None
    """When its worker granted it (logged ``granted``, then fired the hook), if known."""

    @property
    def claimed(self) -> float:
        """Since when a ``lock-lost`` of its worker is about this hold: its grant, or its start
        when the grant's time is not known."""
        return self.start if self.granted is None else self.granted


@dataclass(frozen=True)
class Verdict:
    """What a run shows; ``ok`` only without violations, lost or doubled ops."""

    holds: int
    overlaps_excused: list[tuple[Hold, Hold]] = field(default_factory=list[tuple[Hold, Hold]])
    violations: list[str] = field(default_factory=list[str])
    lost: list[str] = field(default_factory=list[str])
    doubled: list[str] = field(default_factory=list[str])
    token_regressions: list[str] = field(default_factory=list[str])
    repeats_excused: list[str] = field(default_factory=list[str])
    """Attempts started again after a lost lock or as a told re-run after a kill."""

    @property
    def ok(self) -> bool:
        return not (self.violations or self.lost or self.doubled or self.token_regressions)

    def summary(self) -> str:
        return (
            f"{self.holds} holds, {len(self.overlaps_excused)} excused overlaps, "
            f"{len(self.violations)} violations, {len(self.lost)} lost, "
            f"{len(self.doubled)} run twice, {len(self.token_regressions)} token regressions, "
            f"{len(self.repeats_excused)} excused repeats"
        )


def _lost_lock(hold: Hold, lock_lost: dict[str, list[float]]) -> bool:
    """Whether the holder's worker said it lost the lock at or after it granted the hold."""
    return any(ts >= hold.claimed for ts in lock_lost.get(hold.unit, []))


def overlaps(
    holds: list[Hold], capacity: int, lock_lost: dict[str, list[float]]
) -> tuple[list[tuple[Hold, Hold]], list[str]]:
    """Excused overlaps and violations: a hold that starts while ``capacity`` others run."""
    excused: list[tuple[Hold, Hold]] = []
    violations: list[str] = []
    ordered = sorted(holds, key=lambda h: h.start)
    for index, hold in enumerate(ordered):
        running = [h for h in ordered[:index] if h.end > hold.start]
        if len(running) < capacity:
            continue
        if _lost_lock(hold, lock_lost) and all(h.token > hold.token for h in running):
            excused.extend((hold, h) for h in running)  # a stale late starter, told
            continue
        guilty = [h for h in running if not (_lost_lock(h, lock_lost) and h.token < hold.token)]
        if len(guilty) < capacity:
            excused.extend((h, hold) for h in running if h not in guilty)
            continue
        violations.append(
            f"{hold.unit} op {hold.op} (token {hold.token}) started at {hold.start:.3f} while "
            + ", ".join(f"{h.unit} op {h.op} (token {h.token})" for h in running)
            + " ran"
        )
    return excused, violations


def token_regressions(holds: list[Hold], lock_lost: dict[str, list[float]]) -> list[str]:
    """First starts of grants whose token is not above every earlier grant's (a stale holder
    told it lost its lock excepted: the resource refuses its old token)."""
    first_seen: dict[tuple[str, int], Hold] = {}
    for hold in sorted(holds, key=lambda h: h.start):
        first_seen.setdefault((hold.unit, hold.token), hold)
    regressions: list[str] = []
    highest = 0
    for hold in sorted(first_seen.values(), key=lambda h: h.start):
        if hold.token <= highest and not _lost_lock(hold, lock_lost):
            regressions.append(f"{hold.unit} op {hold.op}: token {hold.token} after {highest}")
        highest = max(highest, hold.token)
    return regressions


def judge(
    holds: list[Hold],
    capacity: int,
    lock_lost: dict[str, list[float]],
    requested: set[str],
    outcomes: dict[str, list[str]],
    *,
    kills: Mapping[str, Sequence[float]],
) -> Verdict:
    """The verdict on one run.

    ``requested``: every op id asked for; ``outcomes``: op id -> outcomes found in histories;
    ``kills``: unit -> times its worker was SIGKILLed.
    """
    excused, violations = overlaps(holds, capacity, lock_lost)
    lost = sorted(op for op in requested if not outcomes.get(op))
    ended_twice = [op for op, found in outcomes.items() if len(found) > 1]
    starts = Counter((h.op, h.attempt) for h in holds)
    repeats = {
        f"{op} attempt {attempt} started {count} times": _excused_repeat(
            op, attempt, holds, lock_lost, kills
        )
        for (op, attempt), count in starts.items()
        if count > 1
    }
    return Verdict(
        holds=len(holds),
        overlaps_excused=excused,
        violations=violations,
        lost=lost,
        doubled=sorted(ended_twice) + sorted(r for r, fine in repeats.items() if not fine),
        token_regressions=token_regressions(holds, lock_lost),
        repeats_excused=sorted(r for r, fine in repeats.items() if fine),
    )


def _excused_repeat(
    op: str,
    attempt: int,
    holds: list[Hold],
    lock_lost: dict[str, list[float]],
    kills: Mapping[str, Sequence[float]],
) -> bool:
    """Whether each run of the attempt but the last could be run again: it lost its lock, or
    the next run is the told re-run after its worker was killed."""
    runs = sorted((h for h in holds if (h.op, h.attempt) == (op, attempt)), key=lambda h: h.start)
    return all(
        _lost_lock(earlier, lock_lost) or _rerun_after_kill(earlier, later, kills)
        for earlier, later in pairwise(runs)
    )


def _rerun_after_kill(earlier: Hold, later: Hold, kills: Mapping[str, Sequence[float]]) -> bool:
    """``later`` is the re-grant of ``earlier``'s attempt by its unit's restarted worker.

    The worker was killed after ``earlier`` began and before ``later`` did (so before the
    result reached etcd: a result that did is applied, not re-granted), and the re-grant says
    ``rerun`` under a newer token.
    """
    killed = any(earlier.start <= ts <= later.start for ts in kills.get(earlier.unit, ()))
    return killed and later.rerun and later.unit == earlier.unit and later.token > earlier.token
