"""Lock handoff, idle cost and per-operation round trips of rollingops, on a real local etcd.

Run ``uv run python bench/lock_handoff.py`` (about 3 minutes on 2 cores) or add ``--quick``
(under a minute). Every figure comes from real etcd processes started by the test bed (mTLS, client
certificate auth, RBAC on one prefix), so TLS, fsync and raft costs are all in it.

Three parts, each printed as a Markdown table with the target beside the figure:

1. ``handoff``: N contenders on one ``FairSemaphore`` (k = 1), each with its own ``EtcdClient``
   and lease, spread over a few processes, loop acquire -> hold -> release. Handoff latency is
   "release call starts -> next holder's acquire returns". Mutual exclusion and token order are
   checked on the way (violations are counted, expected 0).
2. ``idle``: etcd requests per minute of a ``Worker`` with an empty queue, and of one waiting
   behind a holder that never releases.
3. ``ops``: a ``Worker`` serving a burst of queued operations while this script plays the
   charm (it reports ``release`` as soon as it sees a claim): round trips per operation, and
   the gap between a result being written and the next operation being granted.

Benchmarks print figures; they never assert timings. All times are CLOCK_MONOTONIC, which is
one clock for every process on Linux, so timestamps from different processes compare.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import math
import multiprocessing
import os
import platform
import queue
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollingops.etcd_client import EtcdClient, EtcdSettings
from rollingops.lease import Lease
from rollingops.models import Operation, OperationResult, UnitQueue, utcnow
from rollingops.semaphore import AcquireCancelledError, FairSemaphore
from rollingops.store import OperationStore, QueueSnapshot, waiters_prefix
from rollingops.worker import Worker
from rollingops.worker_config import WorkerConfig

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HOOK_RECORDER = BENCH_DIR / "hook_recorder.py"
HOOK_LOG_ENV = "ROLLINGOPS_BENCH_HOOK_LOG"

TARGET_N = (2, 128)
"""The handoff target covers every N in this range (issue: N = 2 ... 128)."""
TARGET_P50_MS = 10.0
TARGET_P99_MS = 50.0
CONTENDERS_PER_PROCESS = 32
"""At most this many contenders share one process (its GIL and its gRPC threads), as units on
separate machines would not; ``--processes`` is the least number of processes."""
TARGET_IDLE_PER_MIN = 0.0
TARGET_ROUND_TRIPS = 8.0
TARGET_NEXT_OP_MS = 50.0
REFERENCE = (
    "Reference (old library, same setup): mean handoff 10.3 s, >= 30 s between a unit's own"
    " operations, ~19 process launches per operation."
)

SLOW_HANDOFF = 0.080
"""Handoffs this slow are counted apart: etcd delivers the events of a watch created at a past
revision ("unsynced") only from a loop that runs every 100 ms: up to 100 ms, often 80-100."""
STARTUP_TIMEOUT = 120.0
"""Bound on spawning the contender processes and connecting all their clients."""
DRAIN_TIMEOUT = 30.0
"""Bound on contenders noticing the stop flag and reporting back."""
UNIT = "bench/0"


# -- small helpers -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    """Milliseconds with one decimal, or ``-`` when there was nothing to measure."""
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def counter_diff(after: Counter[str], before: Counter[str]) -> Counter[str]:
    """Requests sent between two snapshots of ``EtcdClient.requests``."""
    diff = Counter(after)
    diff.subtract(before)
    return +diff


def breakdown(requests: Counter[str], per: float) -> str:
    """``txn 2.0, range 1.0`` style detail, per operation, largest first."""
    if per <= 0:
        return "-"
    parts = [f"{name} {count / per:.2f}" for name, count in requests.most_common()]
    return ", ".join(parts) or "none"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table, so the output pastes into ``docs/benchmarks.md`` unchanged."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        padded = (f"{c!s:<{w}}" for c, w in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    print(f"\n### {title}\n")
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    sys.stdout.flush()


def progress(message: str) -> None:
    """Progress goes to stderr so that stdout holds only the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def etcd_cluster(size: int) -> Iterator[Any]:
    """A test-bed etcd of ``size`` members, killed on exit whatever happens."""
    from testbed.etcd import EtcdCluster  # noqa: PLC0415 - only the benchmark needs it

    with EtcdCluster(size) as cluster:
        yield cluster


def client_settings(cluster: Any) -> EtcdSettings:
    """What the application's client certificate may reach: the cluster's prefix only."""
    from testbed.workers import settings_for  # noqa: PLC0415 - only the benchmark needs it

    return settings_for(cluster)


# -- part 1: semaphore handoff -------------------------------------------------------------


@dataclass(frozen=True)
class HandoffCase:
    """One row of the handoff table."""

    members: int
    contenders: int
    hold: float
    max_ops: int
    seconds: float
    processes: int
    ttl: int


@dataclass(frozen=True)
class Hold:
    """One acquire -> hold -> release cycle of one contender, in monotonic seconds."""

    owner: str
    token: int
    acquire_start: float
    acquired: float
    release_start: float
    release_end: float


@dataclass
class _ContenderShared:
    """The cross-process plumbing of one handoff row."""

    barrier: Any
    stop: Any
    ops: Any
    results: Any


class Contender:
    """One contender: its own client (own gRPC channel), own lease, own semaphore handle."""

    def __init__(self, settings: EtcdSettings, waiters: str, owner: str, ttl: int) -> None:
        self.owner = owner
        self.client = EtcdClient(settings)
        self.lease = Lease(self.client, ttl)
        self.semaphore = FairSemaphore(self.client, waiters, 1, self.lease, owner)
        self.holds: list[Hold] = []
        self.error = ""

    def run(self, hold: float, deadline: float, stop: threading.Event, ops: Any) -> None:
        """Loop until stopped or out of time; errors end the loop and are reported."""
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                if not self._cycle(hold, deadline, stop):
                    return
                with ops.get_lock():
                    ops.value += 1
        except Exception as error:  # reported in the table, never silently lost
            self.error = f"{self.owner}: {error!r}"

    def _cycle(self, hold: float, deadline: float, stop: threading.Event) -> bool:
        started = time.monotonic()
        try:
            token = self.semaphore.acquire(timeout=deadline - started + 10, cancel=stop)
        except (AcquireCancelledError, TimeoutError):
            return False
        acquired = time.monotonic()
        if hold > 0:
            time.sleep(hold)
        release_start = time.monotonic()
        self.semaphore.release()
        self.holds.append(
            Hold(self.owner, token, started, acquired, release_start, time.monotonic())
        )
        return True

    def close(self) -> None:
        """Revoke the lease (removing any waiter key) and close the channel."""
        with contextlib.suppress(Exception):
            self.lease.revoke()
        self.client.close()


def contender_process(
    settings_json: str,
    waiters: str,
    owners: list[str],
    case: HandoffCase,
    shared: _ContenderShared,
) -> None:
    """Entry point of one spawned process: run ``owners`` as threads, report holds and requests.

    A process, not only threads, because one Python process cannot drive 128 gRPC clients on
    its GIL the way 128 units on separate machines would.
    """
    settings = EtcdSettings.model_validate_json(settings_json)
    contenders = [Contender(settings, waiters, owner, case.ttl) for owner in owners]
    before = sum((Counter(c.client.requests) for c in contenders), Counter())
    events_before = sum(c.client.events_received for c in contenders)
    stop = threading.Event()
    shared.barrier.wait(STARTUP_TIMEOUT)
    deadline = time.monotonic() + case.seconds
    threads = [
        threading.Thread(target=c.run, args=(case.hold, deadline, stop, shared.ops), daemon=True)
        for c in contenders
    ]
    for thread in threads:
        thread.start()
    _follow_stop_flag(shared.stop, stop, threads, deadline + DRAIN_TIMEOUT)
    events = sum(c.client.events_received for c in contenders) - events_before
    stop.set()
    for thread in threads:
        thread.join(max(0.0, deadline + DRAIN_TIMEOUT - time.monotonic()))
    after = sum((Counter(c.client.requests) for c in contenders), Counter())
    holds = [tuple(vars(h).values()) for c in contenders for h in c.holds]
    errors = [c.error for c in contenders if c.error]
    shared.results.put((holds, dict(counter_diff(after, before)), events, errors))
    for contender in contenders:
        contender.close()


def _follow_stop_flag(
    flag: Any, stop: threading.Event, threads: list[threading.Thread], limit: float
) -> None:
    """Mirror the cross-process stop flag into the local event; wait for the threads after.

    Returns once the flag is set, or the threads have ended by themselves: the caller counts
    the watch events then, before the waiters leave the queue (each leaving key is an event
    for the waiter behind it, a cost of the benchmark's teardown, not of a release).
    """
    while any(t.is_alive() for t in threads) and time.monotonic() < limit:
        if flag.is_set():
            return
        time.sleep(0.02)


@dataclass(frozen=True)
class HandoffResult:
    """What one row measured."""

    case: HandoffCase
    holds: list[Hold]
    requests: Counter[str]
    events: int
    """Watch events every contender received during the row (a release wakes whom?)."""
    errors: list[str]
    load: float
    """The machine's 1-minute load average at the row's end."""
    handoffs: list[float] = field(default_factory=list)
    """Steady-state handoffs: after every contender's first turn (see ``analyse``)."""
    rush_max: float = math.nan
    """The slowest handoff of the start-up rush (the first N holds)."""
    overlaps: int = 0
    token_regressions: int = 0
    slowest_at: float = math.nan
    """Seconds from the row's first acquire to the slowest handoff: is it the start-up rush?"""
    probe: list[float] = field(default_factory=list)
    """etcd put latencies measured beside the row (``WriteProbe``)."""


class WriteProbe:
    """etcd's own write latency beside a row: one put every 100 ms from this process.

    A handoff is a delete, a watch event and a transaction. When the probe's puts stall too,
    the tail is the machine's (disk sync, CPU), not the lock's: the column says which.
    """

    INTERVAL = 0.1

    def __init__(self, settings: EtcdSettings) -> None:
        self._client = EtcdClient(settings)
        self._key = f"{settings.prefix}probe"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="write-probe", daemon=True)
        self.latencies: list[float] = []

    def __enter__(self) -> WriteProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            started = time.monotonic()
            # A put that fails counts as a stall as long as its bound.
            with contextlib.suppress(Exception):
                self._client.put(self._key, b"probe")
            self.latencies.append(time.monotonic() - started)


def run_handoff(settings: EtcdSettings, case: HandoffCase) -> HandoffResult:
    """Spawn the contender processes for one row, let them run, collect and analyse."""
    ctx = multiprocessing.get_context("spawn")
    procs_count = min(
        max(case.processes, math.ceil(case.contenders / CONTENDERS_PER_PROCESS)), case.contenders
    )
    shared = _ContenderShared(
        barrier=ctx.Barrier(procs_count + 1),
        stop=ctx.Event(),
        ops=ctx.Value("i", 0),
        results=ctx.Queue(),
    )
    case_prefix = f"{settings.prefix}handoff-n{case.contenders}-h{int(case.hold * 1000)}/"
    waiters = waiters_prefix(case_prefix)
    owners = [f"c{i:03d}" for i in range(case.contenders)]
    procs = [
        ctx.Process(
            target=contender_process,
            args=(settings.model_dump_json(), waiters, owners[i::procs_count], case, shared),
            daemon=True,
        )
        for i in range(procs_count)
    ]
    for proc in procs:
        proc.start()
    try:
        shared.barrier.wait(STARTUP_TIMEOUT)
        with WriteProbe(settings) as probe:
            _stop_when_done(shared, case, procs)
        result = _collect(case, shared, procs)
        return dataclasses.replace(result, probe=probe.latencies)
    finally:
        _reap(procs)


def _stop_when_done(shared: _ContenderShared, case: HandoffCase, procs: list[Any]) -> None:
    deadline = time.monotonic() + case.seconds
    while time.monotonic() < deadline and any(p.is_alive() for p in procs):
        if shared.ops.value >= case.max_ops:
            break
        time.sleep(0.01)
    shared.stop.set()


def _collect(case: HandoffCase, shared: _ContenderShared, procs: list[Any]) -> HandoffResult:
    holds: list[Hold] = []
    requests: Counter[str] = Counter()
    events = 0
    errors: list[str] = []
    limit = time.monotonic() + case.seconds + DRAIN_TIMEOUT
    for _ in procs:
        try:
            got_holds, got_requests, got_events, got_errors = shared.results.get(
                timeout=max(0.1, limit - time.monotonic())
            )
        except queue.Empty:
            errors.append("a contender process did not report")
            break
        holds.extend(Hold(*h) for h in got_holds)
        requests.update(got_requests)
        events += got_events
        errors.extend(got_errors)
    load = os.getloadavg()[0]
    return analyse(HandoffResult(case, holds, requests, events, errors, load))


def _reap(procs: list[Any]) -> None:
    """Give processes time to revoke their leases, then make sure none is left behind."""
    for proc in procs:
        proc.join(10)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def analyse(result: HandoffResult) -> HandoffResult:
    """Handoff latencies, overlapping holds and token order, from the merged hold records.

    Holds are ordered by the moment their acquire returned. A handoff is a pair of consecutive
    holds where the next holder was already waiting when the release started; its latency is
    the next acquire's return minus the release start. Two holds overlap if one's acquire
    returned before an earlier holder had started to release.

    The first N holds are the start-up rush: every contender enters at once (N enter
    transactions and watches on 2 cores), which units joining one by one never do. The tail
    is taken after it, from the (N+1)-th hold on, when every holder entered in steady state;
    the rush's slowest handoff is reported apart.
    """
    ordered = sorted(result.holds, key=lambda h: h.acquired)
    pairs = [
        (nxt.acquired - cur.release_start, nxt.acquired, index)
        for index, (cur, nxt) in enumerate(itertools.pairwise(ordered), start=1)
        if nxt.acquire_start < cur.release_start
    ]
    rush = result.case.contenders
    handoffs = [latency for latency, _, index in pairs if index >= rush]
    rush_max = max((latency for latency, _, index in pairs if index < rush), default=math.nan)
    steady = [(latency, at) for latency, at, index in pairs if index >= rush]
    slowest_at = max(steady)[1] - ordered[0].acquire_start if steady else math.nan
    overlaps = 0
    regressions = 0
    latest_release = -math.inf
    last_token = 0
    for hold in ordered:
        overlaps += hold.acquired < latest_release
        regressions += hold.token <= last_token
        latest_release = max(latest_release, hold.release_start)
        last_token = max(last_token, hold.token)
    return HandoffResult(
        result.case,
        ordered,
        result.requests,
        result.events,
        result.errors,
        result.load,
        handoffs,
        rush_max,
        overlaps,
        regressions,
        slowest_at,
    )


def handoff_row(result: HandoffResult) -> list[str]:
    """One table row; the target column is filled only where the target applies."""
    case, lat = result.case, result.handoffs
    ops = len(result.holds)
    window = (result.holds[-1].release_end - result.holds[0].acquire_start) if ops else math.nan
    target = f"p50 <= {TARGET_P50_MS:.0f}, p99 <= {TARGET_P99_MS:.0f}" if in_target(result) else ""
    return [
        str(case.members),
        str(case.contenders),
        f"{case.hold * 1000:.0f}",
        str(ops),
        str(len(lat)),
        ms(sum(lat) / len(lat) if lat else math.nan),
        ms(percentile(lat, 0.5)),
        ms(percentile(lat, 0.99)),
        ms(max(lat) if lat else math.nan),
        f"{result.slowest_at:.2f}",
        str(sum(1 for x in lat if x >= SLOW_HANDOFF)),
        ms(result.rush_max),
        f"{ms(percentile(result.probe, 0.5))} / {ms(percentile(result.probe, 0.99))}",
        f"{ops / window:.1f}" if ops else "-",
        f"{result.requests.total() / ops:.2f}" if ops else "-",
        f"{result.events / ops:.2f}" if ops else "-",
        f"{result.overlaps}/{result.token_regressions}",
        str(len(result.errors)),
        f"{result.load:.2f}",
        target,
    ]


def in_target(result: HandoffResult) -> bool:
    """Whether the handoff target covers this row's N."""
    return TARGET_N[0] <= result.case.contenders <= TARGET_N[1]


HANDOFF_HEADERS = (
    "members",
    "N",
    "hold ms",
    "ops",
    "steady handoffs",
    "mean ms",
    "p50 ms",
    "p99 ms",
    "max ms",
    "max at s",
    "slow",
    "rush max ms",
    "etcd put p50 / p99 ms",
    "ops/s",
    "req/op",
    "events/release",
    "overlaps/token errs",
    "errors",
    "load avg",
    "target (ms)",
)


# -- worker plumbing shared by parts 2 and 3 -----------------------------------------------


class EventLog(logging.Handler):
    """Keeps the worker's structured events in memory, stamped with CLOCK_MONOTONIC.

    In memory rather than the JSON log file, so that several in-process workers do not share
    one file and the timestamps are on the same clock as everything else here.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.events.append(
                (time.monotonic(), record.getMessage(), getattr(record, "fields", {}))
            )
            self._changed.notify_all()

    def count(self, event: str) -> int:
        with self._changed:
            return sum(1 for _, name, _ in self.events if name == event)

    def wait_for(self, event: str, count: int, timeout: float) -> bool:
        """Wait until ``event`` has been seen ``count`` times in total; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(1 for _, name, _ in self.events if name == event) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def times(self, event: str) -> list[tuple[float, dict[str, Any]]]:
        with self._changed:
            return [(t, f) for t, name, f in self.events if name == event]


def worker_config(
    settings: EtcdSettings, prefix: str, workdir: Path, lease_ttl: int, unit: str = UNIT
) -> WorkerConfig:
    """A unit's worker settings on the lock domain at ``prefix``, with the hook recorder in
    place of ``juju-exec``."""
    return WorkerConfig(
        unit=unit,
        charm_dir=workdir / "charm",
        etcd=settings.model_copy(update={"prefix": prefix}),
        lease_ttl=lease_ttl,
        state_dir=workdir / "state",
        hook_runner=HOOK_RECORDER,
        hook_timeout=30,
    )


@contextlib.contextmanager
def running_worker(
    settings: EtcdSettings, prefix: str, workdir: Path, lease_ttl: int
) -> Iterator[tuple[Worker, EventLog]]:
    """A real ``Worker`` in a thread of this process, so its ``client.requests`` is readable."""
    log = EventLog()
    engine_logger = logging.getLogger("rollingops")
    engine_logger.addHandler(log)
    engine_logger.setLevel(logging.INFO)
    engine_logger.propagate = False
    stop = threading.Event()
    worker = Worker(worker_config(settings, prefix, workdir, lease_ttl), stop)
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    try:
        yield worker, log
    finally:
        stop.set()
        thread.join(15)
        engine_logger.removeHandler(log)


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    """Poll a cheap local condition (no etcd request) until true or out of time."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def enqueue(store: OperationStore, count: int, tag: str) -> float:
    """Queue ``count`` distinct operations in one transaction; return when it was written.

    Each has its own kwargs: the queue merges a request equal to the last waiting one.
    """

    def add(q: UnitQueue) -> UnitQueue:
        for i in range(count):
            op = Operation(
                id=f"{tag}-{i}", callback="restart", kwargs={"n": i}, requested_at=utcnow()
            )
            q = q.enqueue(op)
        return q

    store.update(add)
    return time.monotonic()


# -- part 2: idle and waiting cost ---------------------------------------------------------


class EtcdMetrics:
    """Messages etcd received over gRPC, from its own ``/metrics``, summed over members.

    The one view that also covers a worker in its own process, whose client counters this
    script cannot read. Scraping is plain HTTPS, not gRPC, so it does not count itself.
    """

    def __init__(self, cluster: Any) -> None:
        self._urls = [f"https://{endpoint}/metrics" for endpoint in cluster.endpoints]
        self._tls = ssl.create_default_context(cafile=str(cluster.ca_file))
        self._tls.load_cert_chain(str(cluster.root_cert_file), str(cluster.root_key_file))
        self._tls.check_hostname = False  # the member certificate names "etcd", not 127.0.0.1

    def received(self) -> Counter[str]:
        """gRPC messages received so far, by method."""
        total: Counter[str] = Counter()
        for url in self._urls:
            with urllib.request.urlopen(url, context=self._tls, timeout=5) as response:  # noqa: S310
                text = response.read().decode()
            for line in text.splitlines():
                if line.startswith("grpc_server_msg_received_total{"):
                    method = line.split('grpc_method="', 1)[1].split('"', 1)[0]
                    total[method] += int(float(line.rsplit(" ", 1)[1]))
        return total


@contextlib.contextmanager
def worker_process(settings: EtcdSettings, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m rollingops.worker --config FILE``, as the charm runs it; SIGTERMed on exit."""
    config = worker_config(settings, "idle-process", workdir, 30, unit="bench/1")
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "worker.json"
    config_file.write_text(config.model_dump_json())
    argv = [sys.executable, "-m", "rollingops.worker", "--config", str(config_file)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def measure_idle(
    settings: EtcdSettings, seconds: float, workdir: Path, metrics: EtcdMetrics
) -> list[list[str]]:
    """Requests per minute of idle workers (empty queue: each should only hold a watch).

    Two views of the same interval: the in-process worker's own client counters, and what
    etcd itself received, which also covers a real worker process started beside it.
    """
    with (
        worker_process(settings, workdir / "idle-process") as proc,
        running_worker(settings, "idle", workdir / "idle", 30) as (worker, _),
    ):
        log_file = workdir / "idle-process" / "state" / "worker.log"
        wait_until(lambda: log_file.exists() and "started" in log_file.read_text(), 20)
        wait_until(lambda: worker.client.requests["watch"] >= 1, 10)
        time.sleep(1.0)
        server_before = metrics.received()
        row = _requests_per_minute(worker, seconds, "idle worker (empty queue)", "0")
        server = counter_diff(metrics.received(), server_before)
        alive = "" if proc.poll() is None else f" (worker process exited {proc.returncode})"
    server_row = [
        f"etcd-side: idle worker process + the one above{alive}",
        f"{seconds:.0f}",
        f"{server.total() * 60 / seconds:.1f}",
        breakdown(server, seconds / 60) if server else "none",
        "0",
    ]
    return [row, server_row]


def measure_waiting(
    settings: EtcdSettings, seconds: float, lease_ttl: int, workdir: Path
) -> list[str]:
    """Requests per minute of a worker queued behind a holder that never releases.

    Nothing but its lease keep-alive (every ttl / 3) should remain: the wait itself is a watch.
    """
    prefix = f"{settings.prefix}waiting/"
    with EtcdClient(settings) as client:
        lease = Lease(client, 30)
        holder = FairSemaphore(client, waiters_prefix(prefix), 1, lease, "holder")
        holder.acquire(timeout=10)
        try:
            with running_worker(settings, prefix, workdir / "waiting", lease_ttl) as (worker, log):
                store = OperationStore(client, prefix, UNIT)
                enqueue(store, 1, "wait")
                log.wait_for("waiting", 1, 10)
                time.sleep(1.0)
                label = f"worker waiting behind a holder (lease ttl {lease_ttl} s)"
                expected = f"{60 / (lease_ttl / 3):.0f} (keep-alives)"
                return _requests_per_minute(worker, seconds, label, expected)
        finally:
            lease.revoke()


def _requests_per_minute(worker: Worker, seconds: float, label: str, expected: str) -> list[str]:
    before = Counter(worker.client.requests)
    time.sleep(seconds)
    sent = counter_diff(Counter(worker.client.requests), before)
    per_minute = sent.total() * 60 / seconds
    detail = breakdown(sent, seconds / 60) if sent else "none"
    return [label, f"{seconds:.0f}", f"{per_minute:.1f}", detail, expected]


IDLE_HEADERS = ("state", "measured s", "requests/min", "by method (/min)", "expected")


# -- part 3: operations served by one worker -----------------------------------------------


class Charm:
    """Plays the principal charm: reports ``release`` for each operation as soon as it is claimed.

    It follows the queue with its own watch, as the charm would in its hook, and records when
    each report was written (CLOCK_MONOTONIC).
    """

    def __init__(self, client: EtcdClient, prefix: str) -> None:
        self.store = OperationStore(client, prefix, UNIT)
        self.reported: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="charm", daemon=True)

    def __enter__(self) -> Charm:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        snapshot = self.store.load()
        watch = self.store.watch(snapshot)
        try:
            while not self._stop.is_set():
                snapshot = self._report_if_claimed(snapshot)
                fresh = watch.next_change(snapshot, timeout=0.5, stop=self._stop)
                snapshot = fresh or snapshot
        finally:
            watch.close()

    def _report_if_claimed(self, snapshot: QueueSnapshot) -> QueueSnapshot:
        grant = snapshot.queue.current
        if grant is None or grant.result is not None or grant.operation.id in self.reported:
            return snapshot
        op_id = grant.operation.id
        written = self.store.update(lambda q: q.report(op_id, OperationResult.RELEASE), snapshot)
        self.reported[op_id] = time.monotonic()
        return written


@dataclass(frozen=True)
class Burst:
    """What one worker did for ``count`` operations queued at once, idle to idle."""

    count: int
    requests: Counter[str]
    next_op: list[float]
    next_op_raw: list[float]
    first_grant: float
    hooks: int


def run_burst(
    worker: Worker, log: EventLog, charm: Charm, hook_log: Path, *, count: int, tag: str
) -> Burst:
    """Queue ``count`` operations, wait until the worker is idle again, measure what it did."""
    idle_before = log.count("idle")
    results_before = log.count("result")
    hooks_before = _hook_calls(hook_log)
    before = Counter(worker.client.requests)
    enqueued = enqueue(charm.store, count, tag)
    log.wait_for("result", results_before + count, 30 + count)
    log.wait_for("idle", idle_before + 1, 10)
    sent = counter_diff(Counter(worker.client.requests), before)
    granted = {f["op"]: t for t, f in log.times("granted") if f["op"].startswith(f"{tag}-")}
    fired = _hook_returns(log, granted)
    ids = [f"{tag}-{i}" for i in range(count)]
    next_op, raw = [], []
    for cur, nxt in itertools.pairwise(ids):
        if cur in charm.reported and nxt in granted and cur in fired:
            raw.append(granted[nxt] - charm.reported[cur])
            next_op.append(granted[nxt] - max(charm.reported[cur], fired[cur]))
    first = granted.get(ids[0], math.nan) - enqueued
    return Burst(count, sent, next_op, raw, first, _hook_calls(hook_log) - hooks_before)


def _hook_returns(log: EventLog, granted: dict[str, float]) -> dict[str, float]:
    """When the hook fired for each operation returned (the first ``hook-fired`` after grant)."""
    fired_times = [t for t, _ in log.times("hook-fired")]
    returns = {}
    for op_id, at in granted.items():
        later = [t for t in fired_times if t >= at]
        if later:
            returns[op_id] = min(later)
    return returns


def _hook_calls(hook_log: Path) -> int:
    try:
        return len(hook_log.read_text().splitlines())
    except FileNotFoundError:
        return 0


def measure_ops(
    settings: EtcdSettings, workdir: Path, *, members: int, burst: int, rounds: int, singles: int
) -> tuple[list[Burst], list[Burst]]:
    """Bursts of queued operations, then single operations from idle to idle, on one worker."""
    prefix = f"{settings.prefix}ops/"
    hook_log = workdir / f"hooks-{members}.jsonl"
    os.environ[HOOK_LOG_ENV] = str(hook_log)
    with (
        EtcdClient(settings) as client,
        running_worker(settings, prefix, workdir / f"ops-{members}", 30) as (worker, log),
        Charm(client, prefix) as charm,
    ):
        wait_until(lambda: worker.client.requests["watch"] >= 1, 10)
        bursts = [
            run_burst(worker, log, charm, hook_log, count=burst, tag=f"b{r}")
            for r in range(rounds)
        ]
        ones = [
            run_burst(worker, log, charm, hook_log, count=1, tag=f"s{r}") for r in range(singles)
        ]
    return bursts, ones


def _burst_row(members: int, bursts: list[Burst], label: str) -> list[str]:
    ops = sum(b.count for b in bursts)
    requests = sum((b.requests for b in bursts), Counter())
    gaps = [g for b in bursts for g in b.next_op]
    raw = [g for b in bursts for g in b.next_op_raw]
    return [
        str(members),
        f"{label} x {len(bursts)}",
        str(ops),
        f"{requests.total() / ops:.2f}",
        breakdown(requests, ops),
        f"{sum(b.hooks for b in bursts) / ops:.2f}",
        ms(percentile(gaps, 0.5)),
        ms(percentile(gaps, 0.99)),
        ms(max(gaps) if gaps else math.nan),
        ms(percentile(raw, 0.5)),
        f"<= {TARGET_ROUND_TRIPS:.0f} req/op; next op <= {TARGET_NEXT_OP_MS:.0f} ms",
    ]


def _single_row(members: int, ones: list[Burst]) -> list[str]:
    totals = [b.requests.total() for b in ones]
    requests = sum((b.requests for b in ones), Counter())
    firsts = [b.first_grant for b in ones]
    return [
        str(members),
        str(len(ones)),
        f"{sum(totals) / len(ones):.2f}",
        str(max(totals)),
        breakdown(requests, len(ones)),
        ms(percentile(firsts, 0.5)),
        ms(max(firsts)),
        f"<= {TARGET_ROUND_TRIPS:.0f}",
    ]


BURST_HEADERS = (
    "members",
    "run",
    "ops",
    "req/op",
    "by method (/op)",
    "hook launches/op",
    "next op p50 ms",
    "p99 ms",
    "max ms",
    "incl. hook p50 ms",
    "target",
)
SINGLE_HEADERS = (
    "members",
    "ops",
    "req/op (mean)",
    "req/op (max)",
    "by method (/op)",
    "queued -> granted p50 ms",
    "max ms",
    "target req/op",
)


# -- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run: fewer rows, shorter")
    parser.add_argument("--parts", nargs="+", choices=("handoff", "idle", "ops"))
    parser.add_argument("--members", type=int, nargs="+", help="etcd cluster sizes (1 3)")
    parser.add_argument("--contenders", type=int, nargs="+", help="N (2 8 32 128)")
    parser.add_argument("--holds", type=float, nargs="+", help="hold times in ms (0 50)")
    parser.add_argument("--ops", type=int, help="operations per handoff row (200)")
    parser.add_argument("--row-seconds", type=float, help="time bound per handoff row (12)")
    parser.add_argument("--processes", type=int, default=4, help="contender processes (4)")
    parser.add_argument("--ttl", type=int, default=30, help="contenders' lease TTL, s (30)")
    parser.add_argument("--idle-seconds", type=float, help="idle/waiting measurement (20)")
    parser.add_argument("--waiting-ttl", type=int, default=6, help="waiting worker's TTL (6)")
    parser.add_argument("--burst", type=int, help="operations queued at once, <= 32 (32)")
    parser.add_argument("--rounds", type=int, help="bursts per cluster (2)")
    parser.add_argument("--singles", type=int, help="single operations from idle (5)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults: dict[str, Any] = {
        "parts": ["handoff", "idle", "ops"],
        "members": [1, 3],
        "contenders": [2, 32] if quick else [2, 8, 32, 128],
        "holds": [0.0, 50.0],
        "ops": 60 if quick else 200,
        "row_seconds": 4.0 if quick else 12.0,
        "idle_seconds": 5.0 if quick else 20.0,
        "burst": 16 if quick else 32,
        "rounds": 1 if quick else 2,
        "singles": 3 if quick else 5,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def describe_machine() -> None:
    """The facts a reader needs to compare these figures with another run."""
    print(f"- python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")
    from testbed.etcd import etcd_version  # noqa: PLC0415 - only the benchmark needs it

    print(f"- etcd {etcd_version()}; loopback, mTLS, client-cert auth")


@dataclass
class Findings:
    """Everything measured, kept for the tables and for the comparison with the targets."""

    handoff: list[HandoffResult] = field(default_factory=list)
    idle: list[list[str]] = field(default_factory=list)
    idle_per_minute: list[float] = field(default_factory=list)
    bursts: list[list[str]] = field(default_factory=list)
    singles: list[list[str]] = field(default_factory=list)
    ops: list[tuple[Burst, ...]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("## rollingops lock benchmarks\n")
    print(f"- command: {' '.join(['bench/lock_handoff.py', *(argv or sys.argv[1:])])}")
    describe_machine()
    found = Findings()
    with tempfile.TemporaryDirectory(prefix="rollingops-bench-") as tmp:
        for members in args.members:
            with etcd_cluster(members) as cluster:
                metrics = EtcdMetrics(cluster)
                _measure_on(
                    client_settings(cluster), metrics, Path(tmp), found, members=members, args=args
                )
    _print_results(found)
    return 0


def _measure_on(
    settings: EtcdSettings,
    metrics: EtcdMetrics,
    workdir: Path,
    found: Findings,
    *,
    members: int,
    args: argparse.Namespace,
) -> None:
    """Every selected part on one cluster; idle cost only on the first, it does not vary."""
    if "handoff" in args.parts:
        found.handoff += _handoff_results(settings, members, args)
    if "idle" in args.parts and members == args.members[0]:
        progress(f"idle and waiting cost, {members} member(s)")
        idle = measure_idle(settings, args.idle_seconds, workdir, metrics)
        found.idle += idle
        found.idle_per_minute += [float(row[2]) for row in idle]
        found.idle.append(measure_waiting(settings, args.idle_seconds, args.waiting_ttl, workdir))
    if "ops" in args.parts:
        progress(f"queued operations, {members} member(s)")
        bursts, singles = measure_ops(
            settings,
            workdir,
            members=members,
            burst=args.burst,
            rounds=args.rounds,
            singles=args.singles,
        )
        found.bursts.append(_burst_row(members, bursts, f"burst of {args.burst}"))
        found.singles.append(_single_row(members, singles))
        found.ops += [tuple(bursts), tuple(singles)]


def settle_load(quiet: float = 1.5, longest: float = 90.0) -> None:
    """Wait (at most ``longest`` s) for the 1-minute load average to fall to ``quiet``.

    A row must not inherit the previous row's load: the load average of the row then says
    what the row itself ran beside.
    """
    deadline = time.monotonic() + longest
    while os.getloadavg()[0] > quiet and time.monotonic() < deadline:
        time.sleep(2)


def _handoff_results(
    settings: EtcdSettings, members: int, args: argparse.Namespace
) -> list[HandoffResult]:
    results = []
    for hold_ms in args.holds:
        for n in args.contenders:
            ops = max(args.ops, 2 * n + args.ops // 2)  # the rush, then steady handoffs
            seconds = max(args.row_seconds, ops * (hold_ms / 1000 + 0.02) * 1.5)
            case = HandoffCase(members, n, hold_ms / 1000, ops, seconds, args.processes, args.ttl)
            settle_load()
            progress(f"handoff: {members} member(s), N={n}, hold {hold_ms:.0f} ms")
            result = run_handoff(settings, case)
            for error in result.errors[:3]:
                progress(f"  error: {error}")
            results.append(result)
    return results


def handoff_detail_row(result: HandoffResult) -> list[str]:
    """Where a row's requests went, per operation."""
    case = result.case
    ops = len(result.holds)
    return [
        str(case.members),
        str(case.contenders),
        f"{case.hold * 1000:.0f}",
        breakdown(result.requests, ops),
    ]


def target_rows(found: Findings) -> list[list[str]]:
    """Worst measured figure against each target, over every row that the target covers."""
    rows = []
    at_n = [r for r in found.handoff if in_target(r)]
    if at_n:
        p50 = max(percentile(r.handoffs, 0.5) for r in at_n)
        p99 = max(percentile(r.handoffs, 0.99) for r in at_n)
        fewest = min(len(r.handoffs) for r in at_n)
        note = " (under 100 handoffs a row: p99 is the max)" if fewest < 100 else ""
        span = f"N = {TARGET_N[0]}..{TARGET_N[1]}"
        rows.append(_verdict(f"handoff p50 at {span}", TARGET_P50_MS, p50 * 1000, "ms"))
        p99_row = _verdict(f"handoff p99 at {span}", TARGET_P99_MS, p99 * 1000, "ms")
        p99_row[-1] += note
        rows.append(p99_row)
    if found.idle_per_minute:
        idle = max(found.idle_per_minute)
        rows.append(_verdict("idle worker", TARGET_IDLE_PER_MIN, idle, "requests/min"))
    bursts = [b for group in found.ops for b in group]
    if bursts:
        worst = max(b.requests.total() / b.count for b in bursts)
        rows.append(_verdict("round trips per operation", TARGET_ROUND_TRIPS, worst, "per op"))
        p99s = [percentile([g for b in group for g in b.next_op], 0.99) for group in found.ops]
        p99s = [p for p in p99s if not math.isnan(p)]
        if p99s:
            worst_p99 = max(p99s) * 1000
            rows.append(_verdict("next queued op (p99)", TARGET_NEXT_OP_MS, worst_p99, "ms"))
    return rows


def _verdict(name: str, target: float, worst: float, unit: str) -> list[str]:
    met = "met" if worst <= target else "MISSED"
    return [name, f"<= {target:g} {unit}", f"{worst:.1f} {unit}", met]


def _print_results(found: Findings) -> None:
    if found.handoff:
        print_table(
            "Semaphore handoff, k = 1 (release start -> next acquire returns)",
            HANDOFF_HEADERS,
            [handoff_row(r) for r in found.handoff],
        )
        print_table(
            "Semaphore handoff: etcd requests per operation, by method",
            ("members", "N", "hold ms", "by method (/op)"),
            [handoff_detail_row(r) for r in found.handoff],
        )
    if found.idle:
        print_table("Idle and waiting cost of one worker", IDLE_HEADERS, found.idle)
    if found.bursts:
        print_table(
            "Queued operations on one unit (next op: result written -> next grant, hook excluded)",
            BURST_HEADERS,
            found.bursts,
        )
    if found.singles:
        print_table("One operation from idle to idle", SINGLE_HEADERS, found.singles)
    targets = target_rows(found)
    if targets:
        print_table(
            "Targets (worst row)", ("target", "wanted", "measured (worst)", "verdict"), targets
        )
    print(f"\n{REFERENCE}")


if __name__ == "__main__":
    sys.exit(main())
