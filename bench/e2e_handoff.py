"""End-to-end handoff through hooks: A's callback end -> B's callback start, by segment.

The cluster simulator (real charms hook by hook in ops.testing, real workers, a real one-member
etcd from the test bed) rolls N demo principals round after round: the domain is paused, every
principal requests a restart (0 s callback) in machine order, the domain is resumed, and the
lock goes from unit to unit. Every handoff between two units, the next one already waiting
(but the first of a round, which the resume disturbs: see ``queued_round``), is broken down
with ``rollingops_sim.handoff``: milestones are timestamps the demo's records, the
simulator's timeline and the workers' logs wrote.

Printed, as Markdown on stdout: p50 / p90 / max of each segment and of the total per N; the time
the critical path waits for a hook slot (and how much of it another hook was running: the
simulator runs one hook at a time across the cluster, Juju one per machine); the hooks on the
critical path; and what a real Juju would add per hook, from two figures measured here (hook
tool calls each hook on the path makes, and a fresh Python process importing each charm).
Each handoff's segments go to stderr. Figures only: nothing is asserted.

    uv run python bench/e2e_handoff.py [--units 3 5 10] [--handoffs 20]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rollingops_sim.cluster import Cluster, HookRecord
from rollingops_sim.handoff import HOOK, QUEUE, SEGMENTS, Handoff, queued_round
from rollingops_sim.principal_charm import DEMO
from scenario.mocking import _MockModelBackend
from testbed.etcd import NOT_INSTALLED, EtcdCluster, etcd_installed

warnings.filterwarnings("ignore", category=UserWarning, module="pydantic")
logging.getLogger("ops-scenario").setLevel(logging.ERROR)  # custom events look inconsistent

ROOT = Path(__file__).resolve().parents[1]
HOOK_TOOLS = (
    "relation_get",
    "relation_set",
    "relation_ids",
    "relation_list",
    "relation_model_get",
    "is_leader",
    "config_get",
    "status_get",
    "status_set",
    "application_version_set",
    "juju_log",
    "network_get",
    "secret_get",
    "secret_info_get",
    "secret_set",
    "secret_add",
    "action_get",
    "action_set",
    "opened_ports",
    "planned_units",
)
"""Methods of ops' model backend that run one Juju hook tool process each in a real unit."""
IMPORTS = {
    "rollingops (subordinate)": ["-c", "import rollingops_charm.charm"],
    "demo principal": ["-c", f"import runpy; runpy.run_path({str(DEMO / 'src' / 'charm.py')!r})"],
}
"""What a fresh hook process of each charm imports before its handler runs."""


def run_size(size: int, wanted: int, root: Path, etcd: EtcdCluster) -> list[Handoff]:
    """Roll ``size`` units until at least ``wanted`` handoffs; the handoffs seen."""
    cluster = Cluster(root / f"sim{size}", etcd)
    found: list[Handoff] = []
    try:
        for _ in range(size):
            cluster.add_machine()
        cluster.settle(timeout=600)
        for _ in range(math.ceil(wanted / (size - 2))):
            found += queued_round(cluster)
    finally:
        cluster.close()
    return found


@contextlib.contextmanager
def hook_tool_calls() -> Iterator[list[tuple[float, str, str]]]:
    """(epoch, unit, tool) of every model-backend call that is a hook tool process in Juju."""
    calls: list[tuple[float, str, str]] = []
    originals = {name: getattr(_MockModelBackend, name) for name in HOOK_TOOLS}

    def counted(tool: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: _MockModelBackend, *args: Any, **kwargs: Any) -> Any:
            calls.append((time.time(), self.unit_name, tool))
            return original(self, *args, **kwargs)

        return call

    for name, original in originals.items():
        setattr(_MockModelBackend, name, counted(name.replace("_", "-"), original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(_MockModelBackend, name, original)


def tools_in(hook: HookRecord, calls: list[tuple[float, str, str]]) -> collections.Counter[str]:
    """Hook tool calls the hook made, by tool.

    ``is-leader`` counts once: ops caches its answer for 30 s, ops.testing's backend does not.
    """
    made = collections.Counter(
        tool for at, unit, tool in calls if unit == hook.unit and hook.started <= at <= hook.ended
    )
    made["is-leader"] = min(made["is-leader"], 1)
    return +made


def cold_import_seconds(argv: list[str], times: int = 5) -> float:
    """Median wall time of a fresh Python that imports a charm (and exits)."""
    paths = ":".join(str(ROOT / p) for p in ("charm", "lib", "src", "demo/principal/src"))
    seconds = []
    for _ in range(times):
        started = time.monotonic()
        subprocess.run(
            [sys.executable, *argv], check=True, env={"PYTHONPATH": paths}, capture_output=True
        )
        seconds.append(time.monotonic() - started)
    return statistics.median(seconds)


def ms(values: Sequence[float]) -> str:
    """p50 / p90 / max in milliseconds."""
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return f"{statistics.median(ordered) * 1000:.1f} / {p90 * 1000:.1f} / {ordered[-1] * 1000:.1f}"


def describe(handoff: Handoff) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(handoff.times[0]))
    parts = " ".join(f"{s * 1000:.1f}" for s in handoff.segments)
    return (
        f"{handoff.giver} -> {handoff.taker} at {clock}: {parts} = {handoff.total * 1000:.1f} ms"
    )


def print_table(command: str, results: dict[int, list[Handoff]]) -> None:
    sizes = list(results)
    print("## End-to-end handoff through hooks (cluster simulator, etcd backend)\n")
    print(f"- command: `{command}`")
    print(
        "- milliseconds, p50 / p90 / max over the handoffs; each segment ends at the event "
        "it names and starts at the previous row's; they sum to the total\n"
    )
    print(
        "| # | segment | kind | "
        + " | ".join(f"N = {n} ({len(results[n])} handoffs)" for n in sizes)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(sizes))
    rows: list[tuple[str, str, str, Callable[[Handoff], float]]] = [
        (str(i + 1), name, kind, lambda h, i=i: h.segments[i])
        for i, (name, kind) in enumerate(SEGMENTS)
    ]
    rows += [
        ("", "**total**: A callback end -> B callback start", "", lambda h: h.total),
        ("", "waiting for a hook slot (queue rows)", QUEUE, lambda h: h.seconds_of(QUEUE)),
        ("", "... of which another hook was running", QUEUE, lambda h: h.blocked),
        ("", "running hooks (hook rows)", HOOK, lambda h: h.seconds_of(HOOK)),
    ]
    for number, name, kind, value in rows:
        cells = " | ".join(ms([value(h) for h in results[n]]) for n in sizes)
        print(f"| {number} | {name} | {kind} | {cells} |")


def print_path(results: dict[int, list[Handoff]], calls: list[tuple[float, str, str]]) -> None:
    every = [h for found in results.values() for h in found]
    print("\n### Hooks on the critical path\n")
    print(
        "| hook | unit | on the path | whole hook ms p50 | hook tool calls p50 / max | "
        "most called (mean per hook) |"
    )
    print("|---|---|---|---|---|---|")
    names = ("relation-changed", "relation-changed", "lock-granted", "relation-changed")
    parts = ("its tail, after the callback", "until its etcd write", "all of it", "its head")
    units = ("A principal", "A subordinate", "B subordinate", "B principal")
    for i, (name, part, unit) in enumerate(zip(names, parts, units, strict=True)):
        hooks = [h.path[i] for h in every]
        counts = [tools_in(h, calls) for h in hooks]
        totals = sorted(c.total() for c in counts)
        every_tool = sum(counts, collections.Counter[str]())
        most = ", ".join(f"{t} {n / len(hooks):.1f}" for t, n in every_tool.most_common(4))
        seconds = statistics.median(h.seconds for h in hooks) * 1000
        print(
            f"| rollingops-{name} | {unit} | {part} | {seconds:.1f} | "
            f"{statistics.median(totals):.0f} / {totals[-1]} | {most} |"
        )
    others = collections.Counter(len(h.others) for h in every)
    which = collections.Counter(
        f"{o.unit.split('/')[0]} {o.hook}" for h in every for o in h.others
    )
    print(
        f"\n{len(every[0].path)} hooks on every handoff's critical path; other hooks running "
        f"during a handoff: {dict(sorted(others.items()))} (count: handoffs); they were: "
        + (", ".join(f"{name} x{n}" for name, n in which.most_common()) or "none")
        + "."
    )
    print("\n### A fresh hook process, measured here (median of 5)\n")
    print("| charm | Python start + charm import ms |")
    print("|---|---|")
    for charm, argv in IMPORTS.items():
        print(f"| {charm} | {cold_import_seconds(argv) * 1000:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--handoffs", type=int, default=20, help="at least this many per N (20)")
    args = parser.parse_args()
    if not etcd_installed():
        print(NOT_INSTALLED)
        return 2
    if min(args.units) < 3:
        parser.error("a round of N units gives N - 2 steady handoffs: at least 3 units")
    results: dict[int, list[Handoff]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="e2e-handoff-") as tmp,
        EtcdCluster(1, base_dir=Path(tmp) / "etcd") as etcd,
        hook_tool_calls() as calls,
    ):
        for size in args.units:
            print(f"N = {size} (segments in ms, in table order):", file=sys.stderr, flush=True)
            results[size] = run_size(size, args.handoffs, Path(tmp), etcd)
            for handoff in results[size]:
                print(f"  {describe(handoff)}", file=sys.stderr)
    print_table(" ".join(["uv run python bench/e2e_handoff.py", *sys.argv[1:]]), results)
    print_path(results, calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
