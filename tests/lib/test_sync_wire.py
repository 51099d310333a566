"""The sync lock client against sockets that misbehave: ``timeout`` bounds every wait."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from rollingops_principal.errors import SyncLockError, SyncLockLostError, SyncLockUnavailableError
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


def granting(path: Path, *, then: bytes, prompted: bool) -> None:
    """A worker that grants, sends ``then`` (after one more line of the client's if
    ``prompted``) and closes the connection."""
    listener = listening(path, 1)

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b'{"outcome":"granted","token":7}\n')
            if prompted:
                connection.recv(4096)
            connection.sendall(then)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()


OLD_WORKER_ANSWER = (  # what a worker without guarding answers to any line but release
    b'{"outcome":"error","error":"bad-request","message":"op: Input should be \'release\'"}\n'
)


def test_a_worker_that_predates_guarding_makes_guard_fail_and_the_hold_goes_on(tmp_path):
    granting(tmp_path / "sync.sock", then=OLD_WORKER_ANSWER, prompted=True)
    grant = acquire(tmp_path / "sync.sock", 5, "rollingops-lock", "command")
    with pytest.raises(SyncLockError, match="cannot guard the command: op: Input should be"):
        grant.guard(os.getpid(), 1)
    assert not grant.released


def test_the_worker_s_unprompted_loss_notice_is_read_as_the_reason(tmp_path):
    notice = b'{"outcome":"lost","lost":"lease lost: expired in etcd"}\n'
    granting(tmp_path / "sync.sock", then=notice, prompted=False)
    grant = acquire(tmp_path / "sync.sock", 5, "rollingops-lock", "command")
    assert grant.notice().lost == "lease lost: expired in etcd"


def test_the_worker_s_renewal_says_until_when_the_hold_is_certain(tmp_path):
    granting(tmp_path / "sync.sock", then=b'{"outcome":"valid","until":123.5}\n', prompted=False)
    grant = acquire(tmp_path / "sync.sock", 5, "rollingops-lock", "command")
    reply = grant.notice()
    assert (reply.outcome, reply.until) == ("valid", 123.5)


def test_a_worker_gone_without_a_word_is_a_loss(tmp_path):
    granting(tmp_path / "sync.sock", then=b"", prompted=False)
    grant = acquire(tmp_path / "sync.sock", 5, "rollingops-lock", "command")
    with pytest.raises(SyncLockLostError, match="without a word"):
        grant.notice()


def test_a_renewal_crossing_the_release_is_not_taken_for_its_answer(tmp_path):
    """A ``valid`` line sent as the command ended (unread) or as ``release`` was on its way.

    It comes before ``released``: the release reads past it (before: "the worker did not
    confirm the release", and rollingops-lock exited 70 for a hold that was never lost).
    """
    then = b'{"outcome":"valid","until":123.5}\n{"outcome":"released"}\n'
    granting(tmp_path / "sync.sock", then=then, prompted=True)
    grant = acquire(tmp_path / "sync.sock", 5, "rollingops-lock", "command")
    grant.release()
