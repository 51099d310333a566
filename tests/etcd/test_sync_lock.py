"""Synchronous holds served by real workers on real etcd, through the real client and socket.

Asynchronous holds are what the fake charm records (``start`` .. ``end`` inside the grant);
synchronous holds are recorded here, from the grant's reply to just before the release.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from etcd_helpers import WorkerFarm, distro_build, operation, wait_until
from rollingops_principal.errors import (
    SyncLockError,
    SyncLockLostError,
    SyncLockTimeoutError,
    SyncLockUnavailableError,
)
from rollingops_principal.sync_wire import MAX_LINE, REPLY_MARGIN, acquire, hold, reachable
from test_semaphore import max_overlap

from rollingops.control import DomainControl
from rollingops.etcd_client import EtcdClient
from rollingops.sync_server import MAX_SESSIONS

__all__ = ["distro_build"]  # the one build these tests run on (etcd_helpers)


def socket_of(farm: WorkerFarm, unit: str) -> Path:
    return farm.config(unit).sync_socket


def serving(farm: WorkerFarm, unit: str, **overrides: Any) -> Path:
    """Start the unit's worker; return its socket once it listens."""
    farm.start(unit, **overrides)
    path = socket_of(farm, unit)
    wait_until(path.is_socket, what=f"{unit}'s sync socket")
    return path


def async_intervals(farm: WorkerFarm) -> list[tuple[float, float]]:
    starts = {(r["unit"], r["op"]): r["ts"] for r in farm.records() if r["event"] == "start"}
    return [
        (starts[(r["unit"], r["op"])], r["ts"])
        for r in farm.records()
        if r["event"] == "end" and (r["unit"], r["op"]) in starts
    ]


def contenders(client: EtcdClient, farm: WorkerFarm, capacity: int = 1):
    return DomainControl(client, farm.cluster.prefix, capacity).contenders()


def started(farm: WorkerFarm, op: str) -> float | None:
    return next((r["ts"] for r in farm.records() if r["event"] == "start" and r["op"] == op), None)


def ended(farm: WorkerFarm, op: str) -> float | None:
    return next((r["ts"] for r in farm.records() if r["event"] == "end" and r["op"] == op), None)


@pytest.mark.parametrize("capacity", [1, 2])
def test_sync_and_async_holders_together_never_exceed_k(farm, client, capacity):
    units = [f"app/{n}" for n in range(4)]
    sockets = {unit: serving(farm, unit, max_concurrent=capacity) for unit in units}
    for unit in units:
        farm.enqueue(
            client, unit, *(operation(f"{unit[-1]}-{i}", hold=0.15, n=i) for i in range(3))
        )
    sync_holds: list[tuple[float, float]] = []
    lock = threading.Lock()

    def hold_repeatedly(unit: str) -> None:
        for _ in range(4):
            with hold(sockets[unit], 60, f"test {unit}", "command") as grant:
                begun = time.time()
                assert grant.token > 0
                time.sleep(0.1)
                with lock:
                    sync_holds.append((begun, time.time()))

    threads = [threading.Thread(target=hold_repeatedly, args=(u,)) for u in units[:3]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    wait_until(lambda: len(async_intervals(farm)) == 12, timeout=120, what="every async op")
    assert len(sync_holds) == 12
    both = async_intervals(farm) + sync_holds
    assert max_overlap(both) <= capacity
    if capacity == 2:
        assert max_overlap(both) == 2, "two slots, and nothing ever used both"


def test_sync_hold_goes_ahead_of_waiting_async_ops_and_never_displaces_the_holder(farm, client):
    sockets = {unit: serving(farm, unit) for unit in ("app/0", "app/1", "app/2", "app/3")}
    farm.enqueue(client, "app/0", operation("first", hold=1.5))
    wait_until(lambda: started(farm, "first"), what="the first holder")
    farm.enqueue(client, "app/1", operation("second", hold=0.1))
    wait_until(lambda: len(contenders(client, farm)) == 2, what="the first async waiter")
    farm.enqueue(client, "app/2", operation("third", hold=0.1))  # queued after app/1's
    wait_until(lambda: len(contenders(client, farm)) == 3, what="two async waiters")
    with hold(sockets["app/3"], 30, "scale-down", "hook") as grant:
        granted_at = time.time()
        assert [(c.owner, c.priority) for c in contenders(client, farm)] == [
            ("app/3", True),
            ("app/1", False),
            ("app/2", False),
        ]
        time.sleep(0.3)
    first_end = ended(farm, "first")
    assert first_end is not None
    assert first_end <= granted_at, "the holder was not displaced"
    second_start = wait_until(lambda: started(farm, "second"), what="the next async op")
    assert second_start > granted_at + 0.3, "the async waiter waited for the sync hold"
    tokens = [r["token"] for r in farm.records() if r["event"] == "start"]
    assert tokens[0] < grant.token < tokens[1], "tokens follow the grant order"


def test_a_killed_client_frees_the_lock_at_once_not_at_lease_expiry(farm, client):
    path = serving(farm, "app/0", lease_ttl=30)
    serving(farm, "app/1", lease_ttl=30)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from rollingops_principal.sync_wire import acquire\n"
        "grant = acquire(Path(sys.argv[1]), 30, 'doomed', 'command')\n"
        "print(grant.token, flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert int(holder.stdout.readline()) > 0
    farm.enqueue(client, "app/1", operation("after", hold=0))
    time.sleep(0.5)
    assert started(farm, "after") is None, "the sync hold excludes the async op"
    killed_at = time.time()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    begun = wait_until(lambda: started(farm, "after"), timeout=10, what="the async op")
    assert begun - killed_at < 10, "freed by the dropped connection, not the 30 s lease"


def test_a_timeout_raises_and_leaves_no_key_and_no_lease(farm, client):
    path = serving(farm, "app/0")
    serving(farm, "app/1")
    farm.enqueue(client, "app/1", operation("long", hold=3))
    wait_until(lambda: started(farm, "long"), what="the async holder")
    with pytest.raises(SyncLockTimeoutError, match=r"not granted within 0\.5 s"):
        acquire(path, 0.5, "impatient", "hook")
    assert [(c.owner, c.priority) for c in contenders(client, farm)] == [("app/1", False)]
    (waited,) = [line for line in farm.log("app/0") if line["event"] == "sync-waiting"]
    assert client.keep_alive(int(waited["lease"], 16)) <= 0, "the hold's lease was revoked"


def test_a_worker_stopping_while_a_client_waits_answers_clearly(farm, client):
    path = serving(farm, "app/0")
    serving(farm, "app/1")
    # Held past any load: the sync waiter must still be waiting when the worker stops.
    farm.enqueue(client, "app/1", operation("long", hold=60))
    wait_until(lambda: started(farm, "long"), what="the async holder")
    outcome: list[BaseException] = []

    def wait_for_the_lock() -> None:
        try:
            acquire(path, 30, "waiting", "command")
        except SyncLockError as error:
            outcome.append(error)

    waiter = threading.Thread(target=wait_for_the_lock)
    waiter.start()
    wait_until(lambda: len(contenders(client, farm)) == 2, what="the sync waiter")
    farm.processes["app/0"].send_signal(signal.SIGTERM)
    waiter.join(timeout=15)
    assert not waiter.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], SyncLockUnavailableError)
    assert "stopped" in str(outcome[0])
    assert [c.owner for c in contenders(client, farm)] == ["app/1"], "no sync key left"
    assert not path.exists(), "the socket goes with the worker"


def test_a_hook_of_a_unit_that_holds_an_unanswered_op_is_refused_at_once(farm, client):
    path = serving(farm, "app/0")
    farm.enqueue(client, "app/0", operation("mine", hold=3))
    wait_until(lambda: started(farm, "mine"), what="this unit's own grant")
    begun = time.monotonic()
    with pytest.raises(SyncLockError, match="holds the lock for operation mine"):
        acquire(path, 30, "stop hook", "hook")
    assert time.monotonic() - begun < 5
    with hold(path, 30, "cron job", "command") as grant:  # a command can wait its turn
        assert grant.token > 0
        assert ended(farm, "mine") is not None


def test_force_release_of_a_sync_holder_is_reported_at_its_release(farm, client):
    path = serving(farm, "app/0")
    control = DomainControl(client, farm.cluster.prefix, 1)
    with (  # noqa: PT012 - the release at the end of the block is what raises
        pytest.raises(SyncLockLostError, match="lost"),
        hold(path, 30, "victim", "command"),
    ):
        assert [f.owner for f in control.release_holders("app/0")] == ["app/0"]
        wait_until(lambda: contenders(client, farm) == [], what="the key gone")


def test_the_socket_is_private_to_the_worker_user(farm):
    path = serving(farm, "app/0")
    assert path.stat().st_mode & 0o777 == 0o600


HOSTILE_LINES: list[bytes] = [
    b"not json\n",
    b"\xff\xfe\n",
    b'{"op": "acquire", "timeout": 1, "holder": "x", "context": "hook", "extra": 1}\n',
    b'{"op": "acquire", "timeout": NaN, "holder": "x", "context": "hook"}\n',
    b'{"op": "acquire", "timeout": -1, "holder": "x", "context": "hook"}\n',
    b'{"op": "acquire", "timeout": 1e308, "holder": "x", "context": "hook"}\n',
    b'{"op": "acquire", "timeout": 1, "holder": "a\\nb", "context": "hook"}\n',
    b'{"op": "acquire", "timeout": 1, "holder": "x", "context": "root"}\n',
    b'{"op": "release"}\n',
    b"[" * 5000 + b"\n",
    b"x" * (MAX_LINE * 3),
    b'{"op": "acquire", "timeout": 1, "holder": "' + b"y" * 100 + b'", "context": "hook"}\n',
]


@pytest.mark.parametrize("line", HOSTILE_LINES, ids=range(len(HOSTILE_LINES)))
def test_hostile_input_gets_a_clear_error_and_changes_nothing(farm, client, line):
    path = serving(farm, "app/0")
    before = client.get_prefix(farm.cluster.prefix)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        with reachable(path) as address:
            raw.connect(address)
        raw.sendall(line)
        raw.settimeout(10)
        answer = raw.recv(MAX_LINE)
    assert b'"outcome":"error"' in answer
    assert b'"error":"bad-request"' in answer
    after = client.get_prefix(farm.cluster.prefix)
    assert [(kv.key, kv.mod_revision) for kv in after.kvs] == [
        (kv.key, kv.mod_revision) for kv in before.kvs
    ]
    with hold(path, 10, "after the attack", "command") as grant:
        assert grant.token > 0, "the worker still serves"


def test_a_silent_client_is_dropped_and_garbage_during_a_hold_changes_nothing(farm, client):
    path = serving(farm, "app/0")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        with reachable(path) as address:
            silent.connect(address)
        silent.settimeout(15)
        assert b"no request within" in silent.recv(MAX_LINE)
    grant = acquire(path, 10, "holder", "command")
    connection = grant._connection
    connection.sendall(b'{"op": "acquire"}\n')
    connection.settimeout(10)
    assert b"bad-request" in connection.recv(MAX_LINE)
    assert [c.owner for c in contenders(client, farm)] == ["app/0"], "still held"
    grant.release()
    assert contenders(client, farm) == []


def test_each_unit_serves_its_own_socket_under_its_own_directory(farm):
    paths = [serving(farm, unit) for unit in ("app/0", "app/1")]
    assert paths[0] != paths[1]
    assert all(path.parent.name in ("app-0", "app-1") for path in paths)
    assert all(os.stat(path.parent).st_mode & 0o777 == 0o700 for path in paths)


def test_a_client_leaving_while_a_pause_is_waited_out_ends_its_hold_at_once(farm, client):
    path = serving(farm, "app/0")
    control = DomainControl(client, farm.cluster.prefix, 1)
    control.pause("maintenance", "operator")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with reachable(path) as address:
        raw.connect(address)
    raw.sendall(b'{"op":"acquire","timeout":60,"holder":"h","context":"command"}\n')
    wait_until(lambda: events_of(farm, "app/0", "sync-paused"), what="the hold waiting")
    raw.close()
    wait_until(lambda: control.contenders() == [], timeout=5, what="the hold gone")
    time.sleep(1)
    assert len(events_of(farm, "app/0", "sync-paused")) == 1, "no loop after the client left"


def test_a_stopped_worker_does_not_hang_the_client(farm):
    path = serving(farm, "app/0")
    farm.processes["app/0"].send_signal(signal.SIGSTOP)
    try:
        for _ in range(40):  # earlier callers that gave up filled the backlog
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError), reachable(path) as address:
                filler.connect(address)
            filler.close()
        begun = time.monotonic()
        with pytest.raises(SyncLockError):
            acquire(path, 1, "stop hook", "hook")
        assert time.monotonic() - begun < 1 + REPLY_MARGIN + 2
    finally:
        farm.processes["app/0"].send_signal(signal.SIGCONT)


def test_first_lines_that_trickle_cannot_take_every_session(farm, client):
    path = serving(farm, "app/0")
    request = b'{"op":"acquire","timeout":60,"holder":"' + b"x" * 40 + b'","context":"command"}'
    stop = threading.Event()
    crowd = []
    for _ in range(MAX_SESSIONS):
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with reachable(path) as address:
            connection.connect(address)
        crowd.append(connection)

    def drip() -> None:
        for index in range(len(request)):  # never the newline
            for connection in crowd:
                with contextlib.suppress(OSError):
                    connection.send(request[index : index + 1])
            if stop.wait(2):
                return

    threading.Thread(target=drip, daemon=True).start()
    try:
        time.sleep(7)  # past the 5 s bound on a whole first line
        with hold(path, 5, "stop hook", "hook") as grant:
            assert grant.token > 0
    finally:
        stop.set()
        for connection in crowd:
            connection.close()


def test_a_hook_is_refused_while_its_own_worker_holds_the_slot_before_the_claim(farm, client):
    path = serving(farm, "app/0")
    control = DomainControl(client, farm.cluster.prefix, 1)
    control.pause("maintenance", "operator")
    farm.enqueue(client, "app/0", operation("mine", hold=1))
    wait_until(lambda: events_of(farm, "app/0", "paused"), what="slot held, claim paused")
    begun = time.monotonic()
    with pytest.raises(SyncLockError, match="holds the lock for operation mine"):
        acquire(path, 3, "stop hook", "hook")
    assert time.monotonic() - begun < 2


def test_an_early_release_inside_the_block_is_not_a_loss(farm, client):
    path = serving(farm, "app/0")
    with hold(path, 10, "teardown", "hook") as grant:
        grant.release()
        assert contenders(client, farm) == []
        grant.release()


def events_of(farm: WorkerFarm, unit: str, name: str) -> list[dict[str, Any]]:
    return [line for line in farm.log(unit) if line["event"] == name]


@pytest.mark.parametrize("obstacle", ["regular file", "dangling symlink"])
def test_something_in_the_way_of_the_socket_is_replaced_not_served_around(farm, obstacle):
    path = socket_of(farm, "app/0")
    path.parent.mkdir(mode=0o700, parents=True)
    if obstacle == "regular file":
        path.write_text("left by a bad copy")
    else:
        path.symlink_to(path.parent / "gone.sock")
    path = serving(farm, "app/0")
    with hold(path, 10, "after the obstacle", "command") as grant:
        assert grant.token > 0
    assert not events_of(farm, "app/0", "sync-socket-failed")


def test_a_worker_stopping_leaves_the_socket_a_newer_worker_of_its_unit_bound(farm):
    path = serving(farm, "app/0")
    older, bound_first = farm.processes["app/0"], path.stat().st_ino
    farm.start("app/0")  # a restart that overlaps: the newer worker binds its own socket
    wait_until(lambda: path.is_socket() and path.stat().st_ino != bound_first, what="rebound")
    older.send_signal(signal.SIGTERM)
    older.wait(timeout=30)
    assert path.is_socket(), "the older worker removed only its own socket"
    with hold(path, 10, "served by the newer worker", "command") as grant:
        assert grant.token > 0
