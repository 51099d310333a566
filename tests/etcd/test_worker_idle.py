"""An idle worker sleeps: its sync socket's thread wakes only for a client, or to stop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from etcd_helpers import WorkerFarm, distro_build, wait_until
from rollingops_principal.sync_wire import hold

from rollingops.worker import Worker

__all__ = ["distro_build"]  # a whole worker: the one build the sync-lock tests run on


def context_switches(thread: threading.Thread) -> int:
    """How often ``thread`` left the CPU so far (each wake-up from a wait is one)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


def sync_thread() -> threading.Thread:
    """The sync socket's thread, once started (the socket file exists a moment before)."""
    (thread,) = wait_until(
        lambda: [t for t in threading.enumerate() if t.name == "sync-accept"],
        what="the sync socket's thread",
    )
    return thread


def test_the_sync_socket_of_an_idle_worker_never_wakes_until_a_client_comes(
    farm: WorkerFarm, monkeypatch
):
    config = farm.write_config("app/0")
    config.state_dir.mkdir(parents=True)  # as the entry point's logging set-up does
    for name, value in farm.env().items():
        monkeypatch.setenv(name, value)
    worker = Worker(config)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        accept = sync_thread()
        time.sleep(0.5)  # its way into ``accept`` may wait for the GIL: that is no wake-up
        before = context_switches(accept)
        time.sleep(2)
        assert context_switches(accept) == before  # the old loop woke five times a second
        with hold(config.sync_socket, 10, "test", "command") as grant:
            assert grant.token > 0
    finally:
        worker.stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert not accept.is_alive()  # stopping woke it out of its wait
    assert not config.sync_socket.exists()
