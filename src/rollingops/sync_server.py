"""Synchronous holds of the lock, served by the worker on a root-only Unix socket.

A hook that must hold the lock *now* (``stop``, ``storage-detaching``, a scale-down's
``relation-departed``) cannot wait for an asynchronous grant: it holds the Juju machine lock,
so no hook can run on its machine until it ends. The worker is not a hook, so it serves the
grant: one connection is one hold (wire format: ``rollingops_principal.sync_wire``).

A hold enters the domain's semaphore in its priority lane (ahead of every waiting asynchronous
operation, never ahead of a holder, so at most k hold at every instant, mixed or not), with a
lease of its own kept alive here. It is granted only once a transaction proves the key still
holds, the domain is not paused and the token floor is the one its token was computed under;
a pause is waited out, within the caller's timeout. The hold ends when the client says
``release`` or its connection drops (a killed hook never leaves the lock held), when the worker
stops, or when its lease is lost (then the release says so). A timeout removes the key.

Nothing a client sends can do more than that: the first line must be a valid request within
``_FIRST_LINE_WITHIN`` seconds, later lines only ``release``; a peer of another uid is refused;
at most ``MAX_SESSIONS`` holds (or waits) at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

from rollingops_principal.sync_wire import (
    MAX_LINE,
    AcquireRequest,
    ErrorKind,
    ReleaseRequest,
    Reply,
    parse_line,
    reachable,
)

from .control import DomainControl
from .etcd_client import EtcdClient, EtcdError
from .lease import Lease, LeaseLostError
from .semaphore import MAX_PRIORITY_CAPACITY, AcquireCancelledError, FairSemaphore
from .store import waiters_prefix
from .worker_config import WorkerConfig

logger = logging.getLogger("rollingops.worker")

MAX_SESSIONS = 32
_FIRST_LINE_WITHIN = 5.0
_WAKE_INTERVAL = 0.2
_SO_PEERCRED_FORMAT = "3i"


class _RefusedError(Exception):
    """A hold that ends with an error reply."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


def _log(event: str, **fields: object) -> None:
    logger.info(event, extra={"fields": {"sync": True, **fields}})


class SyncServer:
    """The worker's socket for synchronous holds of one unit's lock domain."""

    def __init__(
        self,
        config: WorkerConfig,
        client: EtcdClient,
        control: DomainControl,
        unanswered_hold: Callable[[], str | None],
    ) -> None:
        self.path = config.sync_socket
        self._client = client
        self._waiters = waiters_prefix(config.etcd.prefix)
        self._control = control
        self._unit = config.unit
        self._capacity = config.max_concurrent
        self._lease_ttl = config.lease_ttl
        self._unanswered_hold = unanswered_hold
        """The operation this unit's worker holds the lock for and awaits an answer to."""
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._sessions: set[_Session] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen on ``path`` (0600; a stale socket file there is replaced) and serve."""
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_mask = os.umask(0o177)
        try:
            with reachable(self.path) as address:
                listener.bind(address)
        finally:
            os.umask(old_mask)
        os.chmod(self.path, 0o600)
        listener.listen(MAX_SESSIONS)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="sync-accept", daemon=True)
        self._thread.start()
        _log("sync-listening", socket=str(self.path))

    def close(self) -> None:
        """Stop accepting, end every hold (keys removed, leases revoked), remove the socket."""
        self._stop.set()
        if self._listener is None:
            return  # never listened: the socket file, if any, is not ours
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (Linux)
        if self._thread is not None:
            self._thread.join()
        self._listener.close()
        with self._guard:
            sessions = list(self._sessions)
        for session in sessions:
            session.end.set()
        for session in sessions:
            session.thread.join(timeout=2 * self._client.settings.total_timeout)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self) -> None:
        """Wait for clients in ``accept`` itself, with no timeout: an idle worker never wakes.

        ``close`` ends the wait by shutting the listener down.
        """
        assert self._listener is not None  # noqa: S101 - set by start
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError as error:
                if self._stop.is_set():
                    return
                _log("sync-accept-failed", error=str(error))
                self._stop.wait(_WAKE_INTERVAL)
                continue
            self._open(connection)

    def _open(self, connection: socket.socket) -> None:
        session = _Session(connection)
        with self._guard:
            crowded = len(self._sessions) >= MAX_SESSIONS
            if not crowded:
                self._sessions.add(session)
        if crowded:
            session.refuse("busy", f"{MAX_SESSIONS} holds or waits already")
            return
        session.thread = threading.Thread(
            target=self._serve, args=(session,), name="sync-hold", daemon=True
        )
        session.thread.start()

    def _serve(self, session: _Session) -> None:
        try:
            session.check_peer()
            request = session.read_request()
            session.watch_for_release()
            self._hold(session, request)
        except _RefusedError as refusal:
            session.refuse(refusal.kind, str(refusal))
        except Exception as error:  # one hold must never take the worker down
            logger.exception("sync hold failed")
            session.refuse("unavailable", f"the worker could not serve the hold: {error}")
        finally:
            session.close()
            with self._guard:
                self._sessions.discard(session)

    def _hold(self, session: _Session, request: AcquireRequest) -> None:
        self._check_grantable(request)
        if self._stop.is_set():
            raise _RefusedError("stopping", "the worker is stopping")
        lease = Lease(self._client, self._lease_ttl)
        semaphore = FairSemaphore(
            self._client, self._waiters, self._capacity, lease, self._unit, priority=True
        )
        _log("sync-waiting", holder=request.holder, context=request.context, lease=f"{lease.id:x}")
        try:
            token = self._grant(semaphore, lease, request, session.end)
            _log("sync-granted", holder=request.holder, token=token, lease=f"{lease.id:x}")
            session.send(Reply(outcome="granted", token=token))
            lost = self._keep(semaphore, lease, session.end)
        finally:
            self._end(semaphore, lease)
        _log("sync-released", holder=request.holder, token=token, lost=lost)
        if session.released.is_set():
            session.send(Reply(outcome="released", lost=lost))

    def _check_grantable(self, request: AcquireRequest) -> None:
        if self._capacity > MAX_PRIORITY_CAPACITY:
            raise _RefusedError(
                "unavailable",
                f"max-concurrent {self._capacity} is above {MAX_PRIORITY_CAPACITY}, the most a "
                "synchronous hold can be proven against",
            )
        running = self._unanswered_hold()
        if request.context == "hook" and self._capacity == 1 and running is not None:
            raise _RefusedError(
                "refused",
                f"this unit holds the lock for operation {running}, whose hook cannot run "
                "while yours holds the machine lock: the hold could only time out",
            )

    def _grant(
        self, semaphore: FairSemaphore, lease: Lease, request: AcquireRequest, end: threading.Event
    ) -> int:
        """Wait for a slot, a resumed domain and a proof; return the fencing token."""
        deadline = time.monotonic() + request.timeout
        try:
            while True:
                semaphore.acquire(timeout=max(deadline - time.monotonic(), 0.001), cancel=end)
                state = self._control.grant_state()
                if state.pause is not None:
                    _log("sync-paused", holder=request.holder, reason=state.pause.reason)
                    self._control.wait_for_change(
                        state, end, lambda: time.monotonic() >= deadline or lease.lost.is_set()
                    )
                    if end.is_set():
                        raise AcquireCancelledError
                    lease.check()
                    if time.monotonic() >= deadline:
                        raise TimeoutError("paused")
                    continue
                token = state.token_for(semaphore.revision)
                proven = (
                    token is not None
                    and self._client.txn(
                        compare=[semaphore.held_condition(), *state.conditions()], success=[]
                    ).succeeded
                )
                if proven and token is not None:
                    return token
                semaphore.release()  # enter again: a floor raise or a lost key
        except TimeoutError as error:
            raise _RefusedError(
                "timeout", f"not granted within {request.timeout:g} s ({error})"
            ) from error
        except AcquireCancelledError as error:
            raise _RefusedError("stopping", "the worker stopped or the client left") from error
        except LeaseLostError as error:
            raise _RefusedError(
                "lost", f"the hold's lease was lost while waiting: {error}"
            ) from error

    def _keep(self, semaphore: FairSemaphore, lease: Lease, end: threading.Event) -> str | None:
        """Hold until released, the client gone or the worker stopping; why it was lost, if."""
        while not end.wait(_WAKE_INTERVAL):
            if lease.lost.is_set():
                return f"lease lost: {lease.lost_reason}"
        if self._stop.is_set():
            return "the worker stopped during the hold"
        try:
            if not semaphore.still_held():
                return "the key went during the hold (force-released or expired)"
        except EtcdError as error:
            return f"etcd could not confirm the hold: {error}"
        return None

    def _end(self, semaphore: FairSemaphore, lease: Lease) -> None:
        """Remove the key and revoke the lease; both expire by themselves if etcd is away."""
        try:
            semaphore.release()
            lease.revoke()
        except EtcdError as error:
            _log("sync-release-failed", error=str(error), expires_within=self._lease_ttl)


class _Session:
    """One client connection: its request, its release, and the replies to it."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self.end = threading.Event()
        """Set when the client releases, goes away, or the worker stops."""
        self.released = threading.Event()
        """Set when the client asked for the release (then it waits for the answer)."""
        self.thread = threading.current_thread()
        self._buffer = b""

    def check_peer(self) -> None:
        """Only root, or the worker's own user, may hold the lock."""
        raw = self._connection.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_SO_PEERCRED_FORMAT)
        )
        _, uid, _ = struct.unpack(_SO_PEERCRED_FORMAT, raw)
        if uid not in (0, os.geteuid()):
            raise _RefusedError("refused", f"uid {uid} may not hold the lock")

    def read_request(self) -> AcquireRequest:
        """The first line, whole within ``_FIRST_LINE_WITHIN`` seconds (however it trickles)."""
        try:
            line = self._next_line(time.monotonic() + _FIRST_LINE_WITHIN)
        except TimeoutError as error:
            raise _RefusedError("bad-request", "no request within 5 s") from error
        except ValueError as error:
            raise _RefusedError("bad-request", str(error)) from error
        if line is None:
            raise _RefusedError("bad-request", "the connection closed before a request")
        try:
            request = parse_line(line, AcquireRequest)
        except ValueError as error:
            raise _RefusedError("bad-request", str(error)) from error
        assert isinstance(request, AcquireRequest)  # noqa: S101 - the model asked for
        return request

    def watch_for_release(self) -> None:
        """From now on, read the client's lines in a thread: ``release``, or the end."""
        self._connection.settimeout(None)
        threading.Thread(target=self._follow, name="sync-client", daemon=True).start()

    def _follow(self) -> None:
        while not self.end.is_set():
            try:
                line = self._next_line()
            except (OSError, ValueError):
                line = None
            if line is None:
                self.end.set()
                return
            try:
                parse_line(line, ReleaseRequest)
            except ValueError as error:
                with contextlib.suppress(OSError):
                    self.send(Reply(outcome="error", error="bad-request", message=str(error)))
                continue
            self.released.set()
            self.end.set()

    def _next_line(self, deadline: float | None = None) -> bytes | None:
        """One line (``None`` at the end); ``ValueError`` for a line too long.

        ``TimeoutError`` when ``deadline`` (monotonic) passes before the line is whole.
        """
        while b"\n" not in self._buffer:
            if len(self._buffer) >= MAX_LINE:
                raise ValueError(f"a line longer than {MAX_LINE} bytes")
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._connection.settimeout(left)
            chunk = self._connection.recv(MAX_LINE)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def send(self, reply: Reply) -> None:
        """One reply line (a client gone meanwhile is not an error of ours)."""
        with contextlib.suppress(OSError):
            self._connection.sendall(reply.line())

    def refuse(self, kind: ErrorKind, message: str) -> None:
        """An error reply; the connection is closed after it."""
        _log("sync-refused", error=kind, message=message)
        self.send(Reply(outcome="error", error=kind, message=message))
        self.close()

    def close(self) -> None:
        """Close the connection (a blocked reader wakes up with its end)."""
        self.end.set()
        with contextlib.suppress(OSError):
            self._connection.shutdown(socket.SHUT_RDWR)
        self._connection.close()
