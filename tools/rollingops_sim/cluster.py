"""A cluster simulator: machines, each with a principal unit and its rollingops subordinate.

What is real: the rollingops charm and the demo principal charm (run hook by hook with
ops.testing), the worker processes the charm starts, etcd from the test bed, and the protocol
between them. What is simulated is Juju:

- **Hooks run one at a time** across the whole cluster. That is stricter than Juju's per-machine
  lock (hooks of different machines never overlap here), so every per-machine guarantee holds.
  The exception is a hook started *on the side* (``start_on_the_side``): it runs in a thread
  while the other machines' hooks go on, and its own machine's hooks wait for it, as Juju's
  machine lock does. That is how a principal's ``stop`` hook holds the sync lock while the
  other units roll: under one global lock it could only wait for itself.
- **Relation data** written by a unit reaches exactly the units that see it. On the container
  relation that is the co-located partner; on the peer relation it is every other subordinate.
  The data arrives as ``relation-changed``. Pending identical hooks are coalesced, as Juju does.
- **Workers fire custom hooks** through ``juju_exec.py``, which asks the simulator over a Unix
  socket and blocks until the hook has run, like juju-exec waiting for the machine lock.
- **Leader election** and **unit add/remove** run the hooks Juju would run.
- **Machines** have their own filesystem for rollingops: each unit's directory lives under its
  machine's ``state_base`` (``/var/lib/rollingops`` on a real machine). A second pair of
  applications (another principal, its own rollingops application) can be placed on a machine
  that already has one (``add_colocated``): two rollingops units then share the machine, its
  hook lock and its state base, as two subordinates of different applications do under Juju.

It counts hook executions per unit and keeps a timeline of hooks: when each was queued,
started and ended, and why it was queued. A hook's wait between queued and started is the
simulator's doing as much as Juju's: one hook at a time across the cluster, where Juju would
only serialise the hooks of one machine (``bench/e2e_handoff.py`` tells the two apart).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import queue
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ops import testing
from rollingops_charm.charm import RollingOpsCharm
from rollingops_charm.unit_record import UnitRecord
from scenario.state import _Event  # pyright: ignore[reportPrivateUsage]
from testbed.charmed_etcd import ETCD_ID, CharmedEtcd, EtcdAnswer, connect
from testbed.etcd import EtcdCluster
from testbed.workers import settings_for

from rollingops.control import DomainControl
from rollingops.etcd_client import EtcdClient, EtcdError
from rollingops.models import UnitQueue
from rollingops.semaphore import Contender
from rollingops.store import OperationStore
from rollingops.worker_config import BASE_ENV
from rollingops_sim.principal_charm import PrincipalCharm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SUB_APP, PRINCIPAL_APP = "rollingops", "principal"
PEER_ID, CONTAINER_BASE = 1, 100
JUJU, OPERATOR, JUJU_EXEC = "juju", "operator", "juju-exec"
"""Causes of a hook that no unit's relation data explains (``HookRecord.cause``)."""


def _load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class AppPair:
    """A principal application and the rollingops application subordinate to it.

    Relation ids are model-wide in Juju, so each pair has its own. Units are numbered after
    their machine: ``rollingops/3`` and ``principal/3`` are on machine 3.
    """

    sub: str
    principal: str
    peer_id: int
    container_base: int
    etcd_id: int

    def container_id(self, machine: int) -> int:
        """The container-scoped relation of the two units on ``machine``."""
        return self.container_base + machine


MAIN = AppPair(SUB_APP, PRINCIPAL_APP, PEER_ID, CONTAINER_BASE, ETCD_ID)
COLOCATED = AppPair("rollingops-b", "principal-b", PEER_ID + 1, 10 * CONTAINER_BASE, ETCD_ID + 10)
"""The second pair, placed on machines of the first (``Cluster.add_colocated``)."""


def principal_context(
    principal: PrincipalCharm, charm: type, root: Path, unit: str
) -> testing.Context[Any]:
    """The ops.testing context of principal ``unit`` (also for side hooks)."""
    app, number = unit.split("/")
    charm_root = root / "charms" / unit.replace("/", "-")
    charm_root.mkdir(parents=True, exist_ok=True)
    return testing.Context(
        charm,
        meta=principal.meta(),
        actions=principal.actions(),
        config=principal.config(),
        app_name=app,
        unit_id=int(number),
        charm_root=charm_root,
    )


@dataclass
class SimUnit:
    """One unit: its ops.testing context and its current state."""

    name: str
    machine: int
    ctx: testing.Context[Any]
    state: testing.State
    pair: AppPair = MAIN

    @property
    def app(self) -> str:
        return self.name.split("/")[0]


@dataclass
class Hook:
    """A hook to run on ``unit``; ``event`` builds the ops.testing event from its state."""

    unit: str
    name: str
    event: Callable[[SimUnit], Any]
    key: tuple[Any, ...] = ()
    """Identical pending hooks (same key) are coalesced."""
    done: threading.Event | None = None
    cause: str = JUJU
    """Why it was queued: Juju's own event, relation data a unit wrote, juju-exec, the operator."""
    queued: float = field(default_factory=time.time)
    """Epoch seconds, like the workers' logs and the demo's records: one clock for all three."""


@dataclass(frozen=True)
class HookRecord:
    """One execution, for the timeline: epoch seconds when queued, started and ended."""

    unit: str
    hook: str
    cause: str
    queued: float
    started: float
    ended: float

    @property
    def seconds(self) -> float:
        """Seconds the hook ran."""
        return self.ended - self.started


class _HookRequests(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, cluster: Cluster) -> None:
        self.cluster = cluster
        super().__init__(str(path), _HookRequestHandler)


class _HookRequestHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        request = json.loads(self.rfile.readline())
        server: _HookRequests = self.server  # type: ignore[assignment]
        ok = server.cluster.fire_custom(request["unit"], request["hook"])
        try:
            self.wfile.write(json.dumps({"ok": ok}).encode() + b"\n")
        except BrokenPipeError:  # the worker gave up waiting (it is being stopped)
            return


@dataclass
class Cluster:
    """Machines with a principal and a rollingops unit each, on one etcd (or none)."""

    root: Path
    etcd: EtcdCluster | None
    max_concurrent: int = 1
    lease_ttl: int = 10
    principal: PrincipalCharm = field(default_factory=PrincipalCharm)
    """The principal charm every machine runs (the demo principal by default)."""
    units: dict[str, SimUnit] = field(default_factory=dict[str, SimUnit])
    timeline: list[HookRecord] = field(default_factory=list[HookRecord])
    peer_writes: collections.Counter[str] = field(default_factory=collections.Counter[str])
    """Writes to the peer relation: ``unit`` bags and the ``app`` bag (each a hook elsewhere)."""
    _pending: collections.deque[Hook] = field(default_factory=collections.deque[Hook])
    _inbox: queue.Queue[Hook] = field(default_factory=queue.Queue[Hook])
    max_running: int = 0
    """Most subordinates ever running an operation at once, checked after every hook."""
    _server: _HookRequests | None = None
    _answers: dict[str, EtcdAnswer] = field(default_factory=dict[str, EtcdAnswer])
    """charmed-etcd's answer to each rollingops application, by name."""
    model: testing.Model = field(default_factory=testing.Model)
    """One model for every unit: the etcd user's name depends on its uuid."""
    _side: dict[int, _SideHook] = field(default_factory=dict[int, "_SideHook"])
    _client: EtcdClient | None = None
    """The simulator's own client, for reading queues from etcd."""
    """Hooks running on the side, by machine (that machine's other hooks wait)."""

    # -- set-up ------------------------------------------------------------------------------

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        runner = self.root / "juju-exec"
        runner.write_text(f'#!/bin/sh\nexec {sys.executable} -m rollingops_sim.juju_exec "$@"\n')
        runner.chmod(0o755)
        socket_path = self.root / "sim.sock"
        os.environ.update(
            {
                "ROLLINGOPS_HOOK_RUNNER": str(runner),
                "ROLLINGOPS_SIM_SOCKET": str(socket_path),
                "ROLLINGOPS_DEMO_RECORD": str(self.record_file),
            }
        )
        self._server = _HookRequests(socket_path, self)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        if self.etcd is not None:
            self._answers[SUB_APP] = connect(self.etcd, app=SUB_APP, model=self.model)
        self._principal_class = self.principal.charm_class()
        self._endpoint = self.principal.endpoint()

    @property
    def record_file(self) -> Path:
        """What the demo principals recorded (start/end of each restart, with tokens)."""
        return self.root / "record.jsonl"

    def state_base(self, machine: int) -> Path:
        """``/var/lib/rollingops`` of ``machine``: where its rollingops units keep their files."""
        return self.root / "machines" / str(machine)

    def unit_dir(self, unit: str) -> Path:
        """A rollingops unit's own directory on its machine."""
        return self.state_base(self.units[unit].machine) / unit.replace("/", "-")

    def add_machine(self) -> int:
        """A new machine with both units, set up and related like Juju would."""
        machine = len({u.machine for u in self.units.values()})
        self._add_pair(MAIN, machine)
        return machine

    def add_colocated(self, machine: int) -> str:
        """The second pair's units on ``machine``, beside the first's; the new subordinate.

        Its rollingops application has its own identity, etcd user and peer relation, and the
        same ``cluster-id`` (the test bed grants one prefix): one lock domain for both.
        """
        if COLOCATED.sub not in self._answers and self.etcd is not None:
            provider = CharmedEtcd(
                self.etcd,
                requirer_app=COLOCATED.sub,
                deployment=self._answers[SUB_APP].provider.world,
                relation_id=COLOCATED.etcd_id,
            )
            self._answers[COLOCATED.sub] = connect(
                self.etcd, app=COLOCATED.sub, model=self.model, provider=provider
            )
        return self._add_pair(COLOCATED, machine)

    def _add_pair(self, pair: AppPair, machine: int) -> str:
        """Both units of ``pair`` on ``machine``, with the hooks Juju runs for them."""
        sub, principal = f"{pair.sub}/{machine}", f"{pair.principal}/{machine}"
        self.units[sub] = SimUnit(
            sub, machine, self._sub_context(pair, machine), self._sub_state(pair, machine), pair
        )
        self.units[principal] = SimUnit(
            principal,
            machine,
            principal_context(self.principal, self._principal_class, self.root, principal),
            self._principal_state(pair, machine),
            pair,
        )
        for hook in ("install", "config_changed", "start"):
            self._queue(principal, hook, lambda u, h=hook: getattr(u.ctx.on, h)())
            self._queue(sub, hook, lambda u, h=hook: getattr(u.ctx.on, h)())
        if self.etcd is not None:
            self._queue(sub, "etcd-relation-joined", _relation_event("joined", pair.etcd_id, 0))
        self._join_peers(sub)
        self._queue(
            principal,
            "rollingops-relation-joined",
            _relation_event("joined", pair.container_id(machine), machine),
        )
        return sub

    def _sub_context(self, pair: AppPair, machine: int) -> testing.Context[Any]:
        charm_root = self.root / "charms" / f"{pair.sub}-{machine}"
        charm_root.mkdir(parents=True, exist_ok=True)
        return testing.Context(
            RollingOpsCharm,
            meta=_load_yaml(ROOT / "metadata.yaml"),
            actions=_load_yaml(ROOT / "actions.yaml"),
            config=_load_yaml(ROOT / "config.yaml"),
            app_name=pair.sub,
            unit_id=machine,
            charm_root=charm_root,
        )

    def _sub_state(self, pair: AppPair, machine: int) -> testing.State:
        relations: set[testing.RelationBase] = {
            testing.PeerRelation("cluster", id=pair.peer_id),
            testing.SubordinateRelation(
                "rollingops",
                id=pair.container_id(machine),
                remote_app_name=pair.principal,
                remote_unit_id=machine,
            ),
        }
        secrets: set[testing.Secret] = set()
        config: dict[str, str | int | float | bool] = {
            "max-concurrent": self.max_concurrent,
            "lease-ttl": self.lease_ttl,
            "etcd-failure-deadline": 5,
        }
        answer = self._answers.get(pair.sub)
        if answer is not None:
            relations.add(answer.relation)
            secrets |= set(answer.secrets)
            config |= answer.config
        leader = not self._subs(pair.sub)
        return testing.State(
            relations=relations, secrets=secrets, config=config, leader=leader, model=self.model
        )

    def _principal_state(self, pair: AppPair, machine: int) -> testing.State:
        relation: testing.RelationBase = (
            testing.SubordinateRelation(
                self._endpoint,
                id=pair.container_id(machine),
                remote_app_name=pair.sub,
                remote_unit_id=machine,
            )
            if self.principal.container_scoped()
            else testing.Relation(
                self._endpoint,
                id=pair.container_id(machine),
                remote_app_name=pair.sub,
                remote_units_data={machine: {}},
            )
        )
        leader = not any(u.app == pair.principal for u in self.units.values())
        return testing.State(relations={relation}, leader=leader, model=self.model)

    def _join_peers(self, sub: str) -> None:
        newcomer = self.units[sub]
        peer_id = newcomer.pair.peer_id
        for other in self._subs(newcomer.app):
            if other.name == sub:
                continue
            self._set_peer_data(other, newcomer.machine, {})
            self._set_peer_data(newcomer, other.machine, {})
            self._queue(
                other.name,
                "cluster-relation-joined",
                _relation_event("joined", peer_id, newcomer.machine),
            )
            self._queue(
                sub, "cluster-relation-joined", _relation_event("joined", peer_id, other.machine)
            )

    def remove_machine(self, machine: int) -> None:
        """Take a machine away: its subordinate stops (its worker with it), peers see it go."""
        self.remove_pair(f"{SUB_APP}/{machine}")

    def remove_pair(self, sub: str) -> None:
        """Remove subordinate ``sub`` and its principal: it stops, its peers see it go."""
        unit = self.units[sub]
        for hook in ("stop", "remove"):
            self._queue(sub, hook, lambda u, h=hook: getattr(u.ctx.on, h)())
        self.run_until(lambda: not self._pending, timeout=60)
        del self.units[sub]
        del self.units[f"{unit.pair.principal}/{unit.machine}"]
        for other in self._subs(unit.app):
            relation = other.state.get_relation(unit.pair.peer_id)
            data = {k: v for k, v in relation.peers_data.items() if k != unit.machine}  # type: ignore[union-attr]
            self._replace_relation(other, dataclasses.replace(relation, peers_data=data))
            self._queue(
                other.name,
                "cluster-relation-departed",
                _relation_event("departed", unit.pair.peer_id, unit.machine),
            )

    def elect(self, machine: int) -> None:
        """Make the subordinate on ``machine`` the leader."""
        for unit in self._subs():
            unit.state = dataclasses.replace(unit.state, leader=unit.machine == machine)
        self._queue(f"{SUB_APP}/{machine}", "leader-elected", lambda u: u.ctx.on.leader_elected())

    # -- operator and charm-author inputs ----------------------------------------------------

    def request(
        self,
        machine: int,
        callback: str = "restart",
        kwargs: dict[str, Any] | None = None,
        max_retry: int | None = None,
        pair: AppPair = MAIN,
    ) -> str:
        """The principal of ``pair`` on ``machine`` requests an operation (through its action)."""
        params = {
            "callback": callback,
            "kwargs": json.dumps(kwargs or {}),
            "max-retry": -1 if max_retry is None else max_retry,
        }
        unit = self.units[f"{pair.principal}/{machine}"]
        action = Hook(
            unit.name,
            "restart-action",
            lambda u: u.ctx.on.action("restart", params=params),
            cause=OPERATOR,
        )
        self._execute(action)
        return str((unit.ctx.action_results or {})["op"])

    def trigger(self, machine: int, hook: str = "config-changed") -> None:
        """Run a plain hook on the principal of ``machine`` (a charm that requests in it)."""
        self.hook(f"{PRINCIPAL_APP}/{machine}", hook)

    def hook(self, unit: str, name: str) -> None:
        """Run the plain hook ``name`` (``config-changed``, ``upgrade-charm``...) on ``unit``."""
        event = name.replace("-", "_")
        self._execute(Hook(unit, name, lambda u: getattr(u.ctx.on, event)(), cause=OPERATOR))

    def configure(self, unit: str, config: dict[str, Any]) -> None:
        """Set ``unit``'s charm config (what ``juju config`` would, without the hook)."""
        sim = self.units[unit]
        sim.state = dataclasses.replace(sim.state, config={**sim.state.config, **config})

    def action(self, unit: str, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run an operator's action on ``unit`` (one hook); its results, or raise its failure."""
        sim = self.units[unit]
        self._execute(
            Hook(
                unit,
                f"{name}-action",
                lambda u: u.ctx.on.action(name, params=params or {}),
                cause=OPERATOR,
            )
        )
        return dict(sim.ctx.action_results or {})

    def status(self, unit: str) -> str:
        """The unit status ``unit`` set in its last hook."""
        return str(self.units[unit].state.unit_status.message)

    def records(self) -> list[dict[str, Any]]:
        """The demo principals' records."""
        if not self.record_file.exists():
            return []
        return [json.loads(line) for line in self.record_file.read_text().splitlines()]

    def etcd_queue(self, machine: int) -> UnitQueue:
        """A subordinate's queue as etcd holds it."""
        assert self.etcd is not None
        with EtcdClient(settings_for(self.etcd)) as client:
            return OperationStore(client, self.etcd.prefix, f"{SUB_APP}/{machine}").load().queue

    def queue_of(self, machine: int) -> UnitQueue:
        """A subordinate's queue where it lives: etcd while etcd grants, else its record."""
        unit = self.units[f"{SUB_APP}/{machine}"]
        if self.etcd is not None and self.backend() == "etcd":
            if self._client is None:
                settings = settings_for(self.etcd, total_timeout=1.0)
                self._client = EtcdClient(settings)
            store = OperationStore(self._client, self.etcd.prefix, unit.name)
            try:
                return store.load().queue
            except EtcdError:
                pass
        return _record(unit).queue

    # -- running -----------------------------------------------------------------------------

    def run_until(self, done: Callable[[], bool], timeout: float) -> None:
        """Run hooks (queued and fired by workers) until ``done()`` or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulation did not settle in {timeout}s")
            self._finish_side_hooks()
            runnable = self._next_runnable()
            self._take_inbox(wait=0.02 if runnable is None else 0)
            if runnable is not None:
                self._pending.remove(runnable)
                self._execute(runnable)

    def start_on_the_side(self, unit: str, name: str) -> None:
        """Start principal ``unit``'s hook ``name`` on the side; its machine's hooks wait for it.

        The hook runs in a process of its own (``side_hook.py``): ops.testing keeps the hook's
        context in ``os.environ``, which two hooks in one process would share.
        """
        sim = self.units[unit]
        assert sim.app == sim.pair.principal, "only principal hooks run on the side"
        assert sim.machine not in self._side, "one hook at a time per machine"
        side = _SideHook(Hook(unit, name, lambda u: getattr(u.ctx.on, name)()), sim.state)
        job = pickle.dumps((self.principal, str(self.root), unit, name, sim.state))
        env = {**os.environ, BASE_ENV: str(self.state_base(sim.machine))}

        def run() -> None:
            done = subprocess.run(
                [sys.executable, "-m", "rollingops_sim.side_hook"],
                input=job,
                capture_output=True,
                check=False,
                env=env,
            )
            if done.returncode:
                side.error = RuntimeError(f"{unit} {name} failed: {done.stderr.decode()[-2000:]}")
            else:
                side.result = pickle.loads(done.stdout)  # noqa: S301 - our own child's output

        side.thread = threading.Thread(target=run, name=f"side-{unit}", daemon=True)
        self._side[sim.machine] = side
        side.started = time.time()
        side.thread.start()

    def side_hooks_done(self) -> bool:
        """Whether every hook started on the side has ended and been taken in."""
        self._finish_side_hooks()
        return not self._side

    def _next_runnable(self) -> Hook | None:
        """The first pending hook whose machine is not busy with a hook on the side."""
        for hook in self._pending:
            unit = self.units.get(hook.unit)
            if unit is None or unit.machine not in self._side:
                return hook
        return None

    def _finish_side_hooks(self) -> None:
        """Take in the state of side hooks that ended, as ``_execute`` does for the others."""
        for machine, side in list(self._side.items()):
            if side.thread is None or side.thread.is_alive():
                continue
            del self._side[machine]
            unit = self.units[side.hook.unit]
            hook = side.hook
            self.timeline.append(
                HookRecord(
                    unit.name, hook.name, hook.cause, hook.queued, side.started, time.time()
                )
            )
            if side.error is not None:
                raise side.error
            assert side.result is not None
            unit.state = _with_remote_data_of(side.result, unit.state)
            self._propagate(unit, side.before)

    def settle(self, timeout: float = 30) -> None:
        """Run until no hook is pending."""
        self.run_until(lambda: not self._pending and self._inbox.empty(), timeout)

    def fire_custom(self, unit: str, hook: str) -> bool:
        """Called from a worker's juju-exec: queue the hook and wait until it ran."""
        if unit not in self.units:
            return False
        done = threading.Event()
        event = _Event(hook.replace("-", "_"))
        self._inbox.put(Hook(unit, hook, lambda _: event, done=done, cause=JUJU_EXEC))
        return done.wait(timeout=120)

    def wait_queued(self, machine: int, op_id: str, timeout: float = 30) -> None:
        """Run until the operation is in the lock's queue (waiting, running or done).

        Requests made one after another, each waited for this way, enter the lock's FIFO queue
        in that order; without it two workers could enter in either order.
        """
        owner = f"{SUB_APP}/{machine}"

        def queued() -> bool:
            if self.etcd is None or self.backend() != "etcd":
                queue = _record(self.units[owner]).queue
                return op_id in queue.operation_ids() | {e.id for e in queue.history}
            queue = self.etcd_queue(machine)
            if queue.current is not None or op_id in {e.id for e in queue.history}:
                return True
            return owner in self.contenders()

        self.run_until(queued, timeout)

    def contenders(self) -> list[str]:
        """Owners in the domain's lock queue, holders first."""
        return [c.owner for c in self.lock_queue()]

    def lock_queue(self) -> list[Contender]:
        """The domain's lock queue, holders first: owner, token, lease, synchronous or not."""
        assert self.etcd is not None
        with EtcdClient(settings_for(self.etcd)) as client:
            return DomainControl(client, self.etcd.prefix, self.max_concurrent).contenders()

    def hold_intervals(self) -> list[tuple[str, float, float]]:
        """(unit, acquired, releasing) from every worker's log: inside each real hold.

        ``acquired`` is logged after the lock is ours, ``releasing`` before we let it go, so
        these intervals overlap only if the real holds did.
        """
        intervals = []
        for entries in self.worker_logs().values():
            acquired: float | None = None
            for entry in entries:
                if entry["event"] == "acquired":
                    acquired = entry["ts"]
                elif entry["event"] == "releasing" and acquired is not None:
                    intervals.append((entry["unit"], acquired, entry["ts"]))
                    acquired = None
        return intervals

    def worker_logs(self) -> dict[str, list[dict[str, Any]]]:
        """Every worker's log so far, by unit: JSON entries with ``ts`` (epoch) and ``event``."""
        logs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for log in (self.root / "machines").glob("*/*/worker.log"):
            text = log.read_text()
            for line in text[: text.rfind("\n") + 1].splitlines():  # not a line being written
                entry = json.loads(line)
                logs[entry["unit"]].append(entry)
        return dict(logs)

    def running(self) -> set[str]:
        """Subordinates whose record shows an operation granted and not yet answered.

        That is when the principal may be running it; once the result is in, the operation only
        waits for its bookkeeping (the worker's finish under etcd).
        """
        running: set[str] = set()
        for unit in self._subs():
            current = _record(unit).queue.current
            if current is not None and current.result is None:
                running.add(unit.name)
        return running

    def backend(self) -> str | None:
        """The backend the leader published, if any."""
        for unit in self._subs():
            raw = unit.state.get_relation(PEER_ID).local_app_data.get("backend")
            if raw:
                return str(json.loads(raw)["backend"])
        return None

    def update_status(self) -> None:
        """Queue update-status on every subordinate (what Juju does every few minutes)."""
        for unit in self._subs():
            self._queue(unit.name, "update-status", lambda u: u.ctx.on.update_status())

    def hook_counts(self) -> collections.Counter[str]:
        """Hook executions per unit so far."""
        return collections.Counter(record.unit for record in self.timeline)

    def close(self) -> None:
        """Stop every subordinate (and so its worker) and the hook server."""
        if self._client is not None:
            self._client.close()
        for unit in self.units.values():
            if unit.app == unit.pair.sub:
                self._queue(unit.name, "stop", lambda u: u.ctx.on.stop())
        try:
            self.run_until(lambda: not self._pending, timeout=60)
        finally:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()

    def _take_inbox(self, wait: float) -> None:
        try:
            self._pending.append(
                self._inbox.get(timeout=wait) if wait else self._inbox.get_nowait()
            )
        except queue.Empty:
            return

    def _queue(
        self,
        unit: str,
        name: str,
        event: Callable[[SimUnit], Any],
        key: tuple[Any, ...] = (),
        cause: str = JUJU,
    ) -> None:
        """Queue a hook, unless an identical one (same key) is pending: it keeps its place."""
        if key and any(h.unit == unit and h.key == key for h in self._pending):
            return
        self._pending.append(Hook(unit, name, event, key, cause=cause))

    def _execute(self, hook: Hook) -> None:
        unit = self.units.get(hook.unit)
        if unit is None:
            if hook.done:
                hook.done.set()
            return
        before = unit.state
        started = time.time()
        os.environ[BASE_ENV] = str(self.state_base(unit.machine))  # the hook's machine
        try:
            unit.state = unit.ctx.run(hook.event(unit), before)
        finally:
            self.timeline.append(
                HookRecord(unit.name, hook.name, hook.cause, hook.queued, started, time.time())
            )
            if hook.done:
                hook.done.set()
        self._propagate(unit, before)
        self.max_running = max(self.max_running, len(self.running()))

    # -- relation data -----------------------------------------------------------------------

    def _propagate(self, unit: SimUnit, before: testing.State) -> None:
        """Deliver what ``unit`` wrote to the units that see it, as relation-changed."""
        peer_id = unit.pair.peer_id
        for relation in unit.state.relations:
            old = before.get_relation(relation.id)
            if relation.id == peer_id and relation.local_app_data != old.local_app_data:
                self.peer_writes["app"] += 1
                self._deliver_app_data(unit, dict(relation.local_app_data))
            if relation.local_unit_data == old.local_unit_data:
                continue
            data = dict(relation.local_unit_data)
            if relation.id == peer_id:
                self.peer_writes["unit"] += 1
                for other in self._subs(unit.app):
                    if other.name != unit.name:
                        self._set_peer_data(other, unit.machine, data)
                        self._queue(
                            other.name,
                            "cluster-relation-changed",
                            _relation_event("changed", peer_id, unit.machine),
                            ("peer", unit.machine),
                            _wrote(unit),
                        )
            elif relation.id == unit.pair.container_id(unit.machine):
                self._deliver_container(unit, relation.id, data)

    def _deliver_app_data(self, leader: SimUnit, data: dict[str, str]) -> None:
        """The leader wrote the peer application bag: every other unit sees it change."""
        for other in self._subs(leader.app):
            if other.name == leader.name:
                continue
            relation = other.state.get_relation(leader.pair.peer_id)
            self._replace_relation(other, dataclasses.replace(relation, local_app_data=data))
            changed = _relation_event("changed", leader.pair.peer_id, leader.machine)
            # Juju tracks the application bag apart from the units' (its own relation-changed,
            # JUJU_REMOTE_UNIT unset): it does not merge with the leader's unit-bag hook.
            key = ("peer-app",)
            self._queue(other.name, "cluster-relation-changed", changed, key, _wrote(leader))

    def _deliver_container(self, unit: SimUnit, relation_id: int, data: dict[str, str]) -> None:
        partner_app = unit.pair.principal if unit.app == unit.pair.sub else unit.pair.sub
        partner = self.units[f"{partner_app}/{unit.machine}"]
        relation = partner.state.get_relation(relation_id)
        if isinstance(relation, testing.SubordinateRelation):
            updated = dataclasses.replace(relation, remote_unit_data=data)
        else:
            updated = dataclasses.replace(relation, remote_units_data={unit.machine: data})
        self._replace_relation(partner, updated)
        self._queue(
            partner.name,
            "rollingops-relation-changed",
            _relation_event("changed", relation_id, unit.machine),
            ("container", relation_id),
            _wrote(unit),
        )

    def _set_peer_data(self, unit: SimUnit, peer: int, data: dict[str, str]) -> None:
        relation = unit.state.get_relation(unit.pair.peer_id)
        peers = {**relation.peers_data, peer: data}  # type: ignore[union-attr]
        self._replace_relation(unit, dataclasses.replace(relation, peers_data=peers))

    @staticmethod
    def _replace_relation(unit: SimUnit, relation: testing.RelationBase) -> None:
        others = {r for r in unit.state.relations if r.id != relation.id}
        unit.state = dataclasses.replace(unit.state, relations={*others, relation})

    def _subs(self, app: str = SUB_APP) -> list[SimUnit]:
        return [u for u in self.units.values() if u.app == app]


@dataclass
class _SideHook:
    """A hook running in a thread of its own (``Cluster.start_on_the_side``)."""

    hook: Hook
    before: testing.State
    thread: threading.Thread | None = None
    started: float = 0.0
    """Epoch seconds, as in ``HookRecord``."""
    result: testing.State | None = None
    error: BaseException | None = None


def _with_remote_data_of(result: testing.State, current: testing.State) -> testing.State:
    """A side hook's output, with what other units wrote while it ran (delivered meanwhile)."""
    relations = set()
    for relation in result.relations:
        seen = current.get_relation(relation.id)
        remote = {
            name: getattr(seen, name)
            for name in ("remote_app_data", "remote_unit_data", "remote_units_data", "peers_data")
            if hasattr(relation, name)
        }
        relations.add(dataclasses.replace(relation, **remote))
    return dataclasses.replace(result, relations=relations)


def _wrote(unit: SimUnit) -> str:
    """The cause of a relation-changed hook: ``unit`` wrote relation data."""
    return f"{unit.name} wrote relation data"


def _record(unit: SimUnit) -> UnitRecord:
    for stored in unit.state.stored_states:
        if stored.name == "_stored" and stored.content.get("record"):
            return UnitRecord.load(str(stored.content["record"]))
    return UnitRecord()


def _relation_event(kind: str, relation_id: int, remote: int) -> Callable[[SimUnit], Any]:
    """``relation-<kind>`` of ``relation_id``, built from the unit's state when it runs."""

    def make(unit: SimUnit) -> Any:
        relation = unit.state.get_relation(relation_id)
        return getattr(unit.ctx.on, f"relation_{kind}")(relation, remote_unit=remote)

    return make
