"""``rollingops-lock`` against a scripted worker: what it does with the renewals it reads.

The real launcher (a subprocess running ``rollingops.lock_command``) and a real command; the
worker is a socket scripted here, so that a renewal can say what a real one rarely does.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from rollingops.lock_command import EXIT_LOST


def scripted_worker(path: Path, stale_after: float, ended: list[float]) -> None:
    """Grant, guard (certain for 5 s), then after ``stale_after`` s a renewal already at its end.

    ``ended`` gets the monotonic time at which the renewal was sent.
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, listener:
            reader = connection.makefile("rb")
            reader.readline()
            connection.sendall(b'{"outcome":"granted","token":7}\n')
            reader.readline()  # the guard: taken on, as a worker would
            until = time.monotonic() + 5
            connection.sendall(b'{"outcome":"guarding","until":%f}\n' % until)
            time.sleep(stale_after)
            stale = time.monotonic() + 0.1  # its lease refresh took all but 0.1 s of the TTL
            ended.append(time.monotonic())
            connection.sendall(b'{"outcome":"valid","until":%f}\n' % stale)
            reader.readline()  # the release
            connection.sendall(b'{"outcome":"released"}\n')

    threading.Thread(target=serve, daemon=True).start()


def test_a_renewal_read_at_once_is_never_stretched_past_its_end(tmp_path):
    """Read as soon as it came, a renewal whose end is near is the worker's word, not a pause.

    The command must be gone by that end (before: taken for the last word before a pause of
    ``rollingops-lock``'s own, it got a second more, past the time the lease could expire).
    """
    sent: list[float] = []
    scripted_worker(tmp_path / "sync.sock", 1.0, sent)
    gone = stubborn_command_ends(tmp_path / "sync.sock")
    # The end was 0.1 s after the renewal was sent, the SIGKILL 0.25 s before it; a load's
    # delay aside, well under the extra second the old launcher gave (1.14 s measured).
    assert gone - sent[0] < 0.9, f"ended {gone - sent[0]:.2f} s after the renewal"


def stubborn_command_ends(socket_path: Path) -> float:
    """Run ``rollingops-lock`` on ``socket_path`` with a command that ignores SIGTERM.

    It must end lost (70); the monotonic time at which the launcher was gone.
    """
    stubborn = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
    )
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rollingops.lock_command",
            "--socket",
            str(socket_path),
            "--",
            sys.executable,
            "-c",
            stubborn,
        ],
        stderr=subprocess.PIPE,
    )
    _, stderr = launcher.communicate(timeout=30)
    gone = time.monotonic()
    assert launcher.returncode == EXIT_LOST, stderr
    return gone


def dying_worker(path: Path, left: float, died: list[float]) -> None:
    """Grant, guard (certain for ``left`` s more), then die without a word (SIGKILLed)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        connection, _ = listener.accept()
        with listener:
            reader = connection.makefile("rb")
            reader.readline()
            connection.sendall(b'{"outcome":"granted","token":7}\n')
            reader.readline()
            until = time.monotonic() + left
            connection.sendall(b'{"outcome":"guarding","until":%f}\n' % until)
            time.sleep(0.2)
            died.append(time.monotonic())
            reader.close()
            connection.close()

    threading.Thread(target=serve, daemon=True).start()


def test_a_worker_dead_near_its_lease_s_end_leaves_no_command_past_it(tmp_path):
    """The worker dies when its lease has little left (its last refreshes failed: etcd slow).

    The command must be gone by that end, not a whole ``_ORPHAN_GRACE`` after the death
    (before: SIGTERM, then SIGKILL 1 s later, whatever the lease had left).
    """
    died: list[float] = []
    dying_worker(tmp_path / "sync.sock", 0.6, died)
    gone = stubborn_command_ends(tmp_path / "sync.sock")
    # Certain for 0.6 s, dead at 0.2 s: gone by 0.6 s, a load's delay aside, well under the
    # old launcher's whole second after the death (1.11 s measured).
    assert gone - died[0] < 0.9, f"ended {gone - died[0]:.2f} s after the worker died"
