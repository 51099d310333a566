"""On a real controller: rollingops on charmed-etcd, rolling over real units one at a time.

The model: charmed-etcd (3 units) with client and peer TLS from self-signed-certificates
(charmed-etcd serves ``etcd-client`` only once its ``client-certificates`` has a provider); the
demo principal (3 units) with the ``rollingops`` subordinate through the ``rollingops``
relation; and ``ubuntu`` (3 units) with a second subordinate application, ``rollingops-ubuntu``,
through ``juju-info``, each application its own lock domain on etcd.

What only a real Juju run confirms (the rest is covered on ops.testing and real etcd): the
packed charms install on the base, the worker runs under systemd, juju-exec fires the custom
hook, charmed-etcd accepts our certificate and prefix, and operations roll over the units one
at a time with strictly increasing fencing tokens, as the principals themselves record them.

Action results come back as strings: ops hands every value to ``action-set`` as ``str(value)``,
so ``True`` arrives as ``"True"`` and a token as ``"42"``.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import jubilant
import pytest

# The first test also sets the model up (packing included, when the runner did not): deploying
# etcd with TLS alone takes 10-20 minutes. pytest's 300 s is for the other suites.
pytestmark = pytest.mark.timeout(120 * 60)

BASE = "ubuntu@24.04"
ETCD, ETCD_CHANNEL = "etcd", "3.6/stable"
TLS, TLS_CHANNEL = "self-signed-certificates", "1/stable"
UBUNTU, UBUNTU_CHANNEL = "ubuntu", "latest/stable"
PRINCIPAL, SUB = "principal", "rollingops"
SUB_UBUNTU = "rollingops-ubuntu"
UNITS = 3
HOLD_SECONDS = 10
"""How long each operation holds the lock: longer than it takes to queue the others."""
TRUE = str(True)
EXCLUSIVE_LOG = "/var/lib/rollingops-itest/exclusive.log"


def _unit_number(name: str) -> int:
    return int(name.rpartition("/")[2])


def _idle_on_etcd(status: jubilant.Status, app: str) -> bool:
    """Every unit of the subordinate ``app`` is up, on etcd, with nothing queued."""
    units = status.get_units(app)
    return len(units) == UNITS and all(
        unit.workload_status.current == "active"
        and unit.workload_status.message.startswith("idle (etcd")
        for unit in units.values()
    )


def _settled(status: jubilant.Status) -> bool:
    """The whole model is up: etcd with TLS, both principals, both subordinates on etcd."""
    return (
        jubilant.all_active(status, TLS, ETCD, PRINCIPAL, UBUNTU)
        and len(status.get_units(PRINCIPAL)) == UNITS
        and len(status.get_units(UBUNTU)) == UNITS
        and _idle_on_etcd(status, SUB)
        and _idle_on_etcd(status, SUB_UBUNTU)
        and jubilant.all_agents_idle(status)
    )


@pytest.fixture(scope="module")
def model(juju: jubilant.Juju, rollingops_charm: Path, principal_charm: Path) -> jubilant.Juju:
    """Deploy everything, etcd and its TLS first (the clients need them), then wait for all."""
    juju.deploy(TLS, TLS, channel=TLS_CHANNEL, base=BASE)
    juju.deploy("charmed-etcd", ETCD, channel=ETCD_CHANNEL, base=BASE, num_units=3)
    juju.integrate(f"{ETCD}:client-certificates", f"{TLS}:certificates")
    juju.integrate(f"{ETCD}:peer-certificates", f"{TLS}:certificates")
    juju.wait(
        lambda status: (
            jubilant.all_active(status, TLS, ETCD) and jubilant.all_agents_idle(status, TLS, ETCD)
        ),
        error=jubilant.any_error,
        timeout=30 * 60,
    )

    juju.deploy(principal_charm, PRINCIPAL, base=BASE, num_units=UNITS)
    juju.deploy(rollingops_charm, SUB, base=BASE)
    juju.integrate(f"{SUB}:rollingops", f"{PRINCIPAL}:rollingops")
    juju.integrate(f"{SUB}:etcd", f"{ETCD}:etcd-client")
    # Our client CA for etcd to trust: SUB's units move to leaves of their own; SUB_UBUNTU keeps
    # the pinned enrolment pair, so both credential modes are exercised.
    juju.integrate(f"{SUB}:etcd-client-ca", f"{ETCD}:client-cas")

    juju.deploy(UBUNTU, UBUNTU, channel=UBUNTU_CHANNEL, base=BASE, num_units=UNITS)
    juju.deploy(rollingops_charm, SUB_UBUNTU, base=BASE)
    juju.integrate(f"{SUB_UBUNTU}:juju-info", f"{UBUNTU}:juju-info")
    juju.integrate(f"{SUB_UBUNTU}:etcd", f"{ETCD}:etcd-client")
    juju.wait(_settled, error=jubilant.any_error, timeout=30 * 60)
    return juju


@dataclass(frozen=True)
class Window:
    """When one operation ran, by the clock of the machine it ran on, and its fencing token."""

    unit: str
    op: str
    token: int
    start: float
    end: float


def assert_one_at_a_time(windows: list[Window]) -> None:
    """No two windows overlap, and tokens strictly increase in the order the windows ran.

    Windows of different machines are compared by their own clocks: LXD machines share the
    host's; VMs need NTP, whose skew is far below the hook round trips between two grants.
    """
    ordered = sorted(windows, key=lambda w: w.start)
    shown = "\n".join(map(str, ordered))
    for before, after in pairwise(ordered):
        assert before.end <= after.start, f"{before.unit} and {after.unit} overlapped:\n{shown}"
        assert before.token < after.token, f"fencing tokens not increasing:\n{shown}"


def _history(juju: jubilant.Juju, unit: str) -> dict[str, dict[str, str]]:
    """A subordinate unit's finished operations by op id (``history`` returns a map "1".."N")."""
    task = juju.run(unit, "history", {"count": 100})
    operations: Mapping[str, dict[str, str]] = task.results.get("operations", {})
    return {entry["op"]: entry for entry in operations.values()}


def _wait_until(juju: jubilant.Juju, done: Callable[[], bool], timeout: float) -> None:
    """Poll ``done`` through ``juju.wait``, which raises as soon as any unit is in error."""
    juju.wait(lambda _: done(), error=jubilant.any_error, delay=5, successes=1, timeout=timeout)


def _subordinate_of(status: jubilant.Status, principal_unit: str) -> str:
    """The rollingops unit beside a demo principal unit (their numbers need not match)."""
    principal = status.apps[PRINCIPAL].units[principal_unit]
    (name,) = (name for name in principal.subordinates if name.startswith(f"{SUB}/"))
    return name


def _principal_record(juju: jubilant.Juju, unit: str) -> list[dict[str, Any]]:
    task = juju.run(unit, "record")
    return json.loads(task.results["record"])


def test_principal_restarts_roll_one_unit_at_a_time(model: jubilant.Juju) -> None:
    """Each demo principal unit requests a restart at once; the lock hands them out in turn."""
    juju = model
    principals = sorted(juju.status().get_units(PRINCIPAL), key=_unit_number)
    requested: dict[str, str] = {}
    for unit in principals:
        task = juju.run(unit, "restart", {"kwargs": json.dumps({"seconds": HOLD_SECONDS})})
        requested[task.results["op"]] = unit

    records: dict[str, list[dict[str, Any]]] = {}

    def all_ended() -> bool:
        records.update({unit: _principal_record(juju, unit) for unit in principals})
        ended = {r["op"] for lines in records.values() for r in lines if r["event"] == "end"}
        return set(requested) <= ended

    _wait_until(juju, all_ended, timeout=10 * 60)

    windows = []
    for op, unit in requested.items():
        (start,) = (r for r in records[unit] if r["op"] == op and r["event"] == "start")
        (end,) = (r for r in records[unit] if r["op"] == op and r["event"] == "end")
        assert start["attempt"] == end["attempt"] == 1, records[unit]
        assert end["result"] == "release", end
        windows.append(Window(unit, op, int(start["token"]), start["ts"], end["ts"]))
    assert_one_at_a_time(windows)

    # The subordinate's side: each operation finished there, with the token the principal saw,
    # and the lock was contended (someone waited for another's restart).
    status = juju.status()
    waited = []
    for window in windows:
        history = _history(juju, _subordinate_of(status, window.unit))
        entry = history[window.op]
        assert entry["outcome"] == "done", entry
        assert int(entry["token"]) == window.token, (entry, window)
        waited.append(float(entry["waited"]))
    assert max(waited) >= HOLD_SECONDS / 2, f"no request waited for another: {waited}"


def _exclusive_window(juju: jubilant.Juju, unit: str, op: str, token: int) -> Window:
    """The command's own start and end times, as it wrote them on its machine."""
    lines = juju.exec("cat", EXCLUSIVE_LOG, unit=unit).stdout.split("\n")
    stamps = dict(line.split() for line in lines if line.strip())
    return Window(unit, op, token, float(stamps["start"]), float(stamps["end"]))


def test_run_exclusive_rolls_over_ubuntu_units(model: jubilant.Juju) -> None:
    """``run-exclusive`` on each ``ubuntu`` machine, no principal code: one command at a time."""
    juju = model
    subordinates = sorted(juju.status().get_units(SUB_UBUNTU), key=_unit_number)
    folder = EXCLUSIVE_LOG.rpartition("/")[0]
    script = (
        f"mkdir -p {folder} && echo start $(date +%s.%N) > {EXCLUSIVE_LOG}"
        f" && sleep {HOLD_SECONDS} && echo end $(date +%s.%N) >> {EXCLUSIVE_LOG}"
    )
    command = shlex.join(["sh", "-c", script])
    requested: dict[str, str] = {}
    for unit in subordinates:
        task = juju.run(unit, "run-exclusive", {"command": command})
        assert task.results["queued"] == TRUE, task.results
        assert task.results["argv"] == f"sh -c {script}", task.results
        requested[unit] = task.results["op"]

    histories: dict[str, dict[str, dict[str, str]]] = {}

    def all_done() -> bool:
        histories.update({unit: _history(juju, unit) for unit in subordinates})
        return all(op in histories[unit] for unit, op in requested.items())

    _wait_until(juju, all_done, timeout=10 * 60)

    windows = []
    for unit, op in requested.items():
        entry = histories[unit][op]
        assert entry["outcome"] == "done", entry
        assert entry["callback"] == "run-exclusive", entry
        windows.append(_exclusive_window(juju, unit, op, int(entry["token"])))
    assert_one_at_a_time(windows)


@pytest.mark.parametrize(("app", "credentials"), [(SUB, "own leaf"), (SUB_UBUNTU, "enrolment")])
def test_units_connect_with_the_expected_credentials(
    model: jubilant.Juju, app: str, credentials: str
) -> None:
    """With client-cas, units move to their own leaf (probed on update-status); else enrolment."""
    juju = model
    deadline = time.monotonic() + 10 * 60
    for unit in sorted(juju.status().get_units(app), key=_unit_number):
        while True:
            seen = juju.run(unit, "lock-status").results.get("etcd-credentials")
            if seen == credentials or time.monotonic() > deadline:
                break
            time.sleep(20)
        assert seen == credentials, (unit, seen)


@pytest.mark.parametrize("app", [SUB, SUB_UBUNTU])
def test_lock_status_reports_etcd(model: jubilant.Juju, app: str) -> None:
    """Every unit's worker runs and reaches etcd; the domain is idle after the rolls."""
    juju = model
    for unit in sorted(juju.status().get_units(app), key=_unit_number):
        results = juju.run(unit, "lock-status").results
        assert results["backend"] == "etcd", results
        assert results["etcd-reachable"] == TRUE, results
        assert results["worker-running"] == TRUE, results
        assert results["paused"] == str(False), results
        assert not results.get("holders"), results


def test_rollingops_lock_on_ubuntu_machines_holds_one_at_a_time(model: jubilant.Juju) -> None:
    """The launcher each unit writes, run on every ``ubuntu`` machine at once: one at a time."""
    juju = model
    status = juju.status()
    subordinates = sorted(status.get_units(SUB_UBUNTU), key=_unit_number)
    folder = EXCLUSIVE_LOG.rpartition("/")[0]
    script = (
        f"mkdir -p {folder} && echo start $(date +%s.%N) > {EXCLUSIVE_LOG}"
        f" && sleep {HOLD_SECONDS} && echo end $(date +%s.%N) >> {EXCLUSIVE_LOG}"
        f" && echo token $ROLLINGOPS_TOKEN >> {EXCLUSIVE_LOG}"
    )

    def hold(unit: str) -> None:
        launcher = f"/var/lib/rollingops/{unit.replace('/', '-')}/rollingops-lock"
        command = shlex.join([launcher, "--timeout", "300", "--", "sh", "-c", script])
        juju.exec(command, unit=unit, wait=10 * 60)

    threads = [threading.Thread(target=hold, args=(unit,)) for unit in subordinates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    windows = []
    for unit in subordinates:
        lines = juju.exec("cat", EXCLUSIVE_LOG, unit=unit).stdout.split("\n")
        stamps = dict(line.split() for line in lines if line.strip())
        token, start, end = int(stamps["token"]), float(stamps["start"]), float(stamps["end"])
        windows.append(Window(unit, "lock", token, start, end))
    assert_one_at_a_time(windows)


def test_a_removed_principal_leaves_under_the_sync_lock_while_the_others_roll(
    model: jubilant.Juju,
) -> None:
    """Scale-down during a rolling restart: the leaving unit's ``stop`` holds the sync lock.

    The demo principal records ``leave-start``/``leave-end`` (or ``leave-failed`` with the
    reason) on its machine, which outlives the unit; the others' restarts must not overlap it.
    """
    juju = model
    juju.add_unit(PRINCIPAL)
    juju.config(PRINCIPAL, {"leave-seconds": HOLD_SECONDS})
    juju.wait(jubilant.all_agents_idle, error=jubilant.any_error, timeout=20 * 60)
    principals = sorted(juju.status().get_units(PRINCIPAL), key=_unit_number)
    leaving, staying = principals[-1], principals[:-1]
    machine = juju.status().get_units(PRINCIPAL)[leaving].machine
    requested = {}
    for unit in staying:
        task = juju.run(unit, "restart", {"kwargs": json.dumps({"seconds": HOLD_SECONDS})})
        requested[task.results["op"]] = unit
    juju.remove_unit(leaving)
    records: dict[str, list[dict[str, Any]]] = {}

    def all_ended() -> bool:
        records.update({unit: _principal_record(juju, unit) for unit in staying})
        ended = {r["op"] for lines in records.values() for r in lines if r["event"] == "end"}
        return set(requested) <= ended and leaving not in juju.status().get_units(PRINCIPAL)

    _wait_until(juju, all_ended, timeout=20 * 60)
    path = "/var/lib/rollingops-demo/record.jsonl"
    lines = juju.exec("cat", path, machine=machine).stdout.splitlines()
    left = [json.loads(line) for line in lines if '"leave' in line]
    assert [r["event"] for r in left if r["unit"] == leaving] == ["leave-start", "leave-end"], left
    start, end = (r for r in left if r["unit"] == leaving)
    windows = [Window(leaving, "leave", int(start["token"]), start["ts"], end["ts"])]
    for op, unit in requested.items():
        (begun,) = (r for r in records[unit] if r["op"] == op and r["event"] == "start")
        (ended,) = (r for r in records[unit] if r["op"] == op and r["event"] == "end")
        windows.append(Window(unit, op, int(begun["token"]), begun["ts"], ended["ts"]))
    assert_one_at_a_time(windows)
