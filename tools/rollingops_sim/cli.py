"""``rollingops-sim``: roll N units of a principal charm through the real subordinate.

    uv run rollingops-sim                                  # the README's main job: 5 demo units
    uv run rollingops-sim --units 8 --max-concurrent 2 --kill-etcd-after 3
    uv run rollingops-sim --charm path/to/my-charm --trigger config-changed

Each machine runs the principal charm (any charm directory; the demo principal by default) and
a rollingops unit, hook by hook with ops.testing; the rollingops units start real worker
processes on a real etcd from the test bed (mTLS, client-certificate auth, per-prefix RBAC), or
none with ``--backend peer``. Every principal is made to request once: through its ``restart``
action (the demo's) or a plain hook (``--trigger config-changed``, for a charm that requests
there). Each live line carries the time the event happened, as the subordinate recorded it;
the summary gives each unit's wait, hold and token and the hooks it took.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.etcd import NOT_INSTALLED, EtcdCluster, etcd_installed, etcd_version

from rollingops.models import CompletedOperation, UnitQueue
from rollingops_sim.cluster import PRINCIPAL_APP, SUB_APP, Cluster
from rollingops_sim.principal_charm import DEMO, PrincipalCharm, PrincipalCharmError

NOTHING_ASKED_WITHIN = 15.0
"""Seconds after the trigger with no request anywhere before the run says so and stops."""
DESCRIPTION = "Roll N units of a principal charm through the real rollingops subordinate."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollingops-sim", description=DESCRIPTION)
    parser.add_argument("--units", type=int, default=5, help="machines (5)")
    parser.add_argument("--max-concurrent", type=int, default=1, help="k, holders at once (1)")
    parser.add_argument("--backend", choices=("etcd", "peer"), default="etcd")
    parser.add_argument("--members", type=int, default=1, help="etcd members (1)")
    parser.add_argument("--charm", type=Path, default=DEMO, help="principal charm directory")
    parser.add_argument("--class", dest="class_name", help="charm class in its src/charm.py")
    parser.add_argument(
        "--trigger",
        default="action:restart",
        help="how each principal requests: action:NAME (the demo's restart) or a hook name",
    )
    parser.add_argument("--callback", default="restart", help="callback of the demo's action")
    parser.add_argument(
        "--kwargs", default='{"seconds": 0.5}', help="kwargs (JSON) of the demo's action"
    )
    parser.add_argument(
        "--kill-etcd-after", type=int, help="kill etcd once this many operations ended"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to finish (180)")
    return parser


@dataclass
class Progress:
    """What has been printed of each unit's operations (granted, ended)."""

    begun: float = field(default_factory=time.time)
    seen: set[tuple[str, str, str]] = field(default_factory=set[tuple[str, str, str]])

    def lines(self, queues: dict[str, UnitQueue]) -> list[tuple[float, str]]:
        """New events, each with the time it happened (the subordinate's timestamps)."""
        new: list[tuple[float, str]] = []
        for unit, queue in queues.items():
            running = queue.current
            if running is not None:
                op = running.operation
                granted = self._granted(
                    op.callback, running.token, running.granted_at, op.requested_at
                )
                key = (unit, op.id, f"granted {running.token}")
                self._add(new, key, running.granted_at, granted)
            for entry in queue.history:
                granted = self._granted(
                    entry.callback, entry.token, entry.granted_at, entry.requested_at
                )
                key = (unit, entry.id, f"granted {entry.token}")
                self._add(new, key, entry.granted_at, granted)
                held = (entry.finished_at - entry.granted_at).total_seconds()
                ended = f"{entry.outcome.value:<10} held {held:.2f} s"
                self._add(new, (unit, entry.id, "ended"), entry.finished_at, ended)
        return sorted(new)

    @staticmethod
    def _granted(callback: str, token: int, granted: dt.datetime, requested: dt.datetime) -> str:
        waited = (granted - requested).total_seconds()
        return f"{'granted':<10} {callback} token {token}, waited {waited:.2f} s"

    def _add(
        self, out: list[tuple[float, str]], key: tuple[str, str, str], at: dt.datetime, text: str
    ) -> None:
        """Add the event ``key`` (unit, op, kind) once, at the time it happened."""
        if key in self.seen:
            return
        self.seen.add(key)
        out.append((at.timestamp(), f"{key[0]:<14} {key[1]:<16} {text}"))


def _clock(ts: float, begun: float) -> str:
    moment = dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]
    return f"{moment} (+{ts - begun:6.2f} s)"


def queues(cluster: Cluster) -> dict[str, UnitQueue]:
    """Every subordinate's queue, from the backend that holds it."""
    return {
        name: cluster.queue_of(unit.machine)
        for name, unit in cluster.units.items()
        if name.startswith(f"{SUB_APP}/")
    }


def request_everywhere(cluster: Cluster, args: argparse.Namespace) -> None:
    kind, _, name = args.trigger.partition(":")
    for machine in range(args.units):
        if kind == "action":
            if name != "restart":
                raise SystemExit("rollingops-sim: only the demo's action:restart is known")
            cluster.request(machine, args.callback, json.loads(args.kwargs))
        else:
            cluster.trigger(machine, args.trigger)


def finished(
    history: list[CompletedOperation], queues_now: dict[str, UnitQueue], units: int
) -> bool:
    idle = all(q.current is None and not q.pending for q in queues_now.values())
    return idle and len(history) >= units


def run(cluster: Cluster, args: argparse.Namespace, etcd: EtcdCluster | None) -> int:
    progress = Progress()  # times are from here: a charm may request while it is set up
    for _ in range(args.units):
        cluster.add_machine()
    cluster.settle()
    backend = cluster.backend() or "none"
    print(
        f"{args.units} machines up ({len(cluster.timeline)} hooks), backend {backend}, "
        f"max-concurrent {args.max_concurrent}; every principal requests now:"
    )
    before = cluster.hook_counts()
    request_everywhere(cluster, args)
    asked = time.monotonic()
    killed = silent = False

    def step() -> bool:
        nonlocal killed, silent
        time.sleep(0.05)  # read the queues at most 20 times a second: hooks run meanwhile
        now = queues(cluster)
        nothing = all(q.current is None and not q.pending and not q.history for q in now.values())
        if nothing and time.monotonic() - asked > NOTHING_ASKED_WITHIN:
            silent = True
            return True
        for ts, line in progress.lines(now):
            print(f"  {_clock(ts, progress.begun)}  {line}", flush=True)
        history = [e for q in now.values() for e in q.history]
        due = args.kill_etcd_after is not None and len(history) >= args.kill_etcd_after
        if due and etcd is not None and not killed:
            print(f"  {_clock(time.time(), progress.begun)}  -- etcd killed --", flush=True)
            for member in etcd.members:
                member.kill()
            killed = True
        return finished(history, now, args.units)

    try:
        cluster.run_until(step, timeout=args.timeout)
    except TimeoutError:
        print(f"not finished within {args.timeout:.0f} s")
        return 1
    if silent:
        print(
            f"no principal requested anything within {NOTHING_ASKED_WITHIN:.0f} s of "
            f"--trigger {args.trigger}: does the charm call rolling.request() there? "
            f"(subordinate status: {cluster.status(f'{SUB_APP}/0')!r})"
        )
        return 1
    summary(cluster, queues(cluster), progress.begun, before)
    return 0


def summary(
    cluster: Cluster, now: dict[str, UnitQueue], begun: float, before: Counter[str]
) -> None:
    """One row per operation in token order; hooks are those since the requests."""
    hooks = cluster.hook_counts() - before
    print(
        f"\n{'unit':<14}{'op':<18}{'outcome':<9}{'token':>14}{'waited':>9}{'held':>8}{'hooks':>7}"
    )
    rows: list[tuple[int, str]] = []
    for unit, queue in now.items():
        machine = unit.rpartition("/")[2]
        unit_hooks = hooks[unit] + hooks[f"{PRINCIPAL_APP}/{machine}"]
        for entry in queue.history:
            waited = (entry.granted_at - entry.requested_at).total_seconds()
            held = (entry.finished_at - entry.granted_at).total_seconds()
            rows.append(
                (
                    entry.token,
                    f"{unit:<14}{entry.id:<18}{entry.outcome.value:<9}"
                    f"{entry.token:>14}{waited:>8.2f}s{held:>7.2f}s{unit_hooks:>7}",
                )
            )
    for _, row in sorted(rows):
        print(row)
    total = sum(hooks.values())
    per_op = total / len(rows) if rows else 0.0
    print(
        f"\n{len(rows)} operations in {time.time() - begun:.2f} s; backend now "
        f"{cluster.backend() or 'none'}; {total} hooks since the requests, "
        f"{per_op:.1f} per operation (hooks column: the principal's and the subordinate's)"
    )


@contextmanager
def _quiet() -> Iterator[None]:
    """Third-party warnings (pydantic models of dpcharmlibs, ops.testing's notes) stay out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        principal = PrincipalCharm(args.charm.resolve(), args.class_name)
        principal.charm_class()
        principal.endpoint()
    except PrincipalCharmError as error:
        raise SystemExit(f"rollingops-sim: {error}") from error
    with _quiet(), tempfile.TemporaryDirectory(prefix="rollingops-sim-") as tmp:
        root = Path(tmp)
        options: dict[str, Any] = {"max_concurrent": args.max_concurrent, "principal": principal}
        if args.backend == "peer" or not etcd_installed():
            if args.backend == "etcd":
                print(f"{NOT_INSTALLED}: using the peer backend")
            sys.exit(_simulate(Cluster(root / "sim", None, **options), args, None))
        with EtcdCluster(args.members, base_dir=root / "etcd") as etcd:
            print(
                f"etcd {etcd_version()} x{args.members} on {etcd.endpoints[0]} "
                "(mTLS, client-cert auth, RBAC)"
            )
            sys.exit(_simulate(Cluster(root / "sim", etcd, **options), args, etcd))


def _simulate(cluster: Cluster, args: argparse.Namespace, etcd: EtcdCluster | None) -> int:
    try:
        return run(cluster, args, etcd)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
