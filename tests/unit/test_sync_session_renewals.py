"""A guarded hold's renewals never block the worker's hold thread on a client that reads nothing.

Real sockets and a real child session: ``_Session`` is the worker's side of one connection.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import threading

from rollingops_principal.sync_wire import GuardRequest, Reply, parse_line

from rollingops import command_session
from rollingops.sync_server import _Session  # pyright: ignore[reportPrivateUsage]


def test_renewals_to_a_stopped_client_never_fill_the_connection(tmp_path):
    """A ``rollingops-lock`` stopped by ^Z reads nothing for hours: the renewals must not pile up.

    Before, each lease refresh added a line; some 280 filled the buffer (46 minutes at the
    default TTL) and the hold's thread blocked in ``sendall`` for as long as the client slept.
    """
    worker_side, client_side = socket.socketpair()
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        session = _Session(worker_side)
        session.check_peer()  # this process: the child's parent, as rollingops-lock is
        ticks = itertools.count(1000)
        session.grant(7, lambda: float(next(ticks)))
        start = command_session.Session.of(child.pid)
        assert start is not None
        session._guard(GuardRequest(pid=child.pid, start=start.start))  # pyright: ignore[reportPrivateUsage]

        def refreshes() -> None:
            for _ in range(2000):
                session.renew()

        renewing = threading.Thread(target=refreshes, daemon=True)
        renewing.start()
        renewing.join(timeout=10)
        assert not renewing.is_alive(), "the hold's thread blocked on the client's buffer"
        client_side.setblocking(False)
        lines = client_side.recv(1 << 20).splitlines(keepends=True)
        replies = [parse_line(line, Reply) for line in lines]
        assert [reply.outcome for reply in replies] == ["granted", "guarding"], "none piled up"
        session.renew()  # the client read them: the newest end goes out at once
        (newest,) = [parse_line(line, Reply) for line in client_side.recv(4096).splitlines(True)]
        assert isinstance(newest, Reply)
        assert newest.until is not None
        assert newest.until > 2000
    finally:
        child.kill()
        child.wait()
        worker_side.close()
        client_side.close()
