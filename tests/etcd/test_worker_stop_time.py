"""A stopping worker lets go of the lock within the time it is given (``STOP_TIMEOUT``).

systemd's ``TimeoutStopSec`` (and the detached supervisor's wait) is ``STOP_TIMEOUT``: past it
the worker is SIGKILLed and its keys stay until the lease TTL. Here it is stopped in the worst
place, holding an operation and a synchronous hold, with etcd hung under it.
"""

from __future__ import annotations

import signal
import time

import pytest
from etcd_helpers import distro_build, operation, wait_until
from rollingops_principal.errors import SyncLockLostError
from rollingops_principal.sync_wire import acquire
from test_sync_lock import contenders, events_of, serving

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
