"""The sync lock client against sockets that misbehave: ``timeout`` bounds every wait."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
from rollingops_principal.errors import SyncLockError, SyncLockUnavailableError
from rollingops_principal.sync_wire import REPLY_MARGIN, acquire


def listening(path: Path, backlog: int) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(backlog)
    return listener


def bounded(timeout: float, path: Path) -> tuple[float, BaseException | None]:
    """Run ``acquire`` in a thread; how long it took and what it raised (None: still blocked)."""
    raised: list[BaseException] = []

    def call() -> None:
        try:
            acquire(path, timeout, "stop hook", "hook")
        except BaseException as error:  # the test looks at it
            raised.append(error)

    begun = time.monotonic()
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout + REPLY_MARGIN + 10)
    return time.monotonic() - begun, (raised[0] if raised else None)


def test_a_worker_that_accepts_nothing_does_not_hang_the_hook(tmp_path):
    path = tmp_path / "sync.sock"
    listener = listening(path, 0)  # a stopped worker: nobody calls accept
    fillers = []
    for _ in range(4):  # earlier callers filled its backlog
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(str(path))
        fillers.append(filler)
    took, raised = bounded(1, path)
    assert isinstance(raised, SyncLockUnavailableError), raised
    assert took < 1 + REPLY_MARGIN + 1
    listener.close()


def test_a_reply_that_trickles_is_bounded_as_a_whole(tmp_path):
    path = tmp_path / "sync.sock"
    listener = listening(path, 1)

    def trickle() -> None:
        connection, _ = listener.accept()
        connection.recv(4096)
        try:
            while True:
                connection.sendall(b" ")  # never a newline
                time.sleep(0.5)
        except OSError:
            return

    threading.Thread(target=trickle, daemon=True).start()
    took, raised = bounded(1, path)
    assert isinstance(raised, SyncLockError), raised
    assert "did not answer within" in str(raised)
    assert took < 1 + REPLY_MARGIN + 1


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 3601])
def test_an_invalid_timeout_is_refused_before_connecting(tmp_path, timeout):
    with pytest.raises(SyncLockError, match="invalid timeout"):
        acquire(tmp_path / "absent.sock", timeout, "stop hook", "hook")
