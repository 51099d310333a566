"""A stopping worker lets go of the lock within the time it is given (``STOP_TIMEOUT``).

systemd's ``TimeoutStopSec`` (and the detached supervisor's wait) is ``STOP_TIMEOUT``: past it
the worker is SIGKILLed and its keys stay until the lease TTL. Here it is stopped in the worst
place, holding an operation and a synchronous hold, with etcd hung under it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from etcd_helpers import distro_build, operation, wait_until
from rollingops_principal.errors import SyncLockLostError
from rollingops_principal.sync_wire import acquire
from test_sync_lock import contenders, events_of, serving

from rollingops.lock_command import launcher
from rollingops.supervisor import STOP_TIMEOUT

__all__ = ["distro_build"]


def test_a_worker_holding_an_operation_and_a_sync_hold_stops_in_time_with_etcd_hung(farm, client):
    path = serving(farm, "app/0", max_concurrent=2, lease_ttl=60)
    farm.enqueue(client, "app/0", operation("running", results=[None]))
    wait_until(lambda: events_of(farm, "app/0", "hook-fired"), what="the operation granted")
    grant = acquire(path, 10, "script", "command")
    assert len(contenders(client, farm, capacity=2)) == 2
    member = farm.cluster.members[0]
    member.pause()
    try:
        stopping = time.monotonic()
        farm.processes["app/0"].send_signal(signal.SIGTERM)
        assert farm.processes["app/0"].wait(timeout=STOP_TIMEOUT) == 0
        took = time.monotonic() - stopping
    finally:
        member.resume()
    assert took < STOP_TIMEOUT * 2 / 3, f"{took:.1f}s leaves too little margin"
    assert events_of(farm, "app/0", "stopped")
    with pytest.raises(SyncLockLostError):  # the script is told its hold ended
        grant.release()


STUBBORN = (  # a command that ignores SIGTERM; argv[1] says it runs
    "import pathlib, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pathlib.Path(sys.argv[1]).write_text('running')\n"
    "time.sleep(600)\n"
)


def test_a_worker_guarding_a_command_that_ignores_sigterm_stops_in_time_with_etcd_hung(
    farm, client, tmp_path
):
    """The worst stop: an operation, a guarded command's SIGTERM grace, etcd hung.

    Past ``STOP_TIMEOUT`` systemd SIGKILLs the worker, whose key then stays until its lease's
    TTL while only the launcher is left to end the command.
    """
    path = serving(farm, "app/0", max_concurrent=2, lease_ttl=60)
    command = tmp_path / "rollingops-lock"
    command.write_text(launcher(Path(sys.executable), [Path(p) for p in sys.path if p], path))
    command.chmod(0o700)
    farm.enqueue(client, "app/0", operation("running", results=[None]))
    wait_until(lambda: events_of(farm, "app/0", "hook-fired"), what="the operation granted")
    running = tmp_path / "running"
    script = subprocess.Popen([str(command), "--", sys.executable, "-c", STUBBORN, str(running)])
    wait_until(running.exists, timeout=60, what="the command running")
    member = farm.cluster.members[0]
    member.pause()
    try:
        stopping = time.monotonic()
        farm.processes["app/0"].send_signal(signal.SIGTERM)
        code = farm.processes["app/0"].wait(timeout=STOP_TIMEOUT * 3)
        took = time.monotonic() - stopping
    finally:
        member.resume()
        script.kill()
        script.wait(timeout=30)
    assert code == 0
    assert took < STOP_TIMEOUT * 2 / 3, f"{took:.1f}s leaves too little margin"
    assert events_of(farm, "app/0", "sync-command-ended")
