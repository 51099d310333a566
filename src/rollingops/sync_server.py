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

A client that runs a command under the hold (``rollingops-lock``) *guards* it first: it names
the session the command leads, a child of the client still waiting to ``exec``. From then on
this server, not the client, is what ends the command: whatever ends the hold (the release, the
client's connection dropping however its processes were killed, the lease lost, the key
force-released, the worker stopping), every process of that session is ended (SIGTERM, SIGKILL
after ``command_session.GRACE``) and gone *before* the key is deleted, so the command never runs
while another unit holds. A hold that ends before its release also tells its guarded client at
once (an unprompted ``lost`` line), and the command gets the SIGTERM then, not at its exit.
Each refresh of the hold's lease is passed on to a guarded client (``valid``, until when the
lease cannot expire), so a worker that stops refreshing without a word (paused) cannot leave
the command running past the lease: the client ends it first. The
worker is the one process the client's signals (its group's SIGHUP, SIGKILL...) never reach,
which is why it, and not a supervisor beside the command, keeps the promise. The key's deletion
(force-release, lease expiry) is watched, so a loss is seen as it happens.

The holds granted now are published for the charm (``sync_holds``) before the grant is answered
and after the key is gone, so the charm never restarts the worker under a hold unawares.

The socket is replaced at start if anything else is in the way (the unit's directory is the
worker's own), and removed at close only if it is still the one this worker bound: a newer
worker of the same unit may have bound its own there meanwhile.

Nothing a client sends can do more than that: the first line must be a valid request within
``_FIRST_LINE_WITHIN`` seconds, later lines only ``release`` or one ``guard`` of a session its
own child leads; a peer of another uid is refused; at most ``MAX_SESSIONS`` holds (or waits) at
once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import stat
import struct
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rollingops_principal.sync_wire import (
    MAX_LINE,
    AcquireRequest,
    ErrorKind,
    GuardRequest,
    Reply,
    parse_hold_line,
    parse_line,
    reachable,
)

from . import command_session, sync_holds
from .control import DomainControl
from .etcd_client import EtcdClient, EtcdError, WatchBrokenError
from .lease import Lease, LeaseLostError
from .models import utcnow
from .semaphore import MAX_PRIORITY_CAPACITY, AcquireCancelledError, FairSemaphore
from .store import waiters_prefix
from .sync_holds import SyncHold
from .worker_config import WorkerConfig

logger = logging.getLogger("rollingops.worker")

MAX_SESSIONS = 32
_FIRST_LINE_WITHIN = 5.0
_WAKE_INTERVAL = 0.2
_SO_PEERCRED_FORMAT = "3i"
_KEY_GONE = "the key went during the hold (force-released or expired)"


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
        last_hold_ended: Callable[[], None] = lambda: None,
    ) -> None:
        self.path = config.sync_socket
        self._state_dir = config.state_dir
        self._client = client
        self._waiters = waiters_prefix(config.etcd.prefix)
        self._control = control
        self._unit = config.unit
        self._capacity = config.max_concurrent
        self._lease_ttl = config.lease_ttl
        self._unanswered_hold = unanswered_hold
        """The operation this unit's worker holds the lock for and awaits an answer to."""
        self._last_hold_ended = last_hold_ended
        """Called once no hold is left after one ended (not when the worker stops)."""
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None
        """Device and inode of the socket file this worker bound: the only one it removes."""
        self._sessions: set[_Session] = set()
        self._guard = threading.Lock()
        self._holds: dict[_Session, SyncHold] = {}
        self._publishing = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen on ``path`` (0600; whatever is there already is replaced) and serve.

        First say that no hold is served: a worker killed under a hold left it published.
        """
        with self._publishing:
            self._write_holds()
        _clear(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_mask = os.umask(0o177)
        try:
            with reachable(self.path) as address:
                listener.bind(address)
        finally:
            os.umask(old_mask)
        os.chmod(self.path, 0o600)
        bound = os.lstat(self.path)
        self._bound = (bound.st_dev, bound.st_ino)
        listener.listen(MAX_SESSIONS)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="sync-accept", daemon=True)
        self._thread.start()
        _log("sync-listening", socket=str(self.path))

    def close(self) -> None:
        """Stop accepting, end every hold (commands, keys, leases), remove our socket."""
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
            session.thread.join(
                timeout=2 * self._client.settings.total_timeout + command_session.BOUND
            )
        with self._publishing:
            self._holds.clear()
            self._write_holds()
        self._remove_socket()

    def _remove_socket(self) -> None:
        """Remove the socket file if it is still the one we bound, not a newer worker's."""
        try:
            found = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (found.st_dev, found.st_ino) == self._bound:
            self.path.unlink(missing_ok=True)

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
        lost: str | None = None
        held_last = False
        try:
            token = self._grant(semaphore, lease, request, session.end)
            hold = SyncHold(
                holder=request.holder, context=request.context, token=token, since=utcnow()
            )
            self._publish(session, hold)
            _log("sync-granted", holder=request.holder, token=token, lease=f"{lease.id:x}")
            session.grant(token, lambda: lease.expires)
            lost = self._keep(semaphore, lease, session)
        finally:
            self._end_command(session, lost)
            self._end(semaphore, lease)
            held_last = self._publish(session, None)
        _log("sync-released", holder=request.holder, token=token, lost=lost)
        if session.released.is_set():
            session.send(Reply(outcome="released", lost=lost))
        if held_last and not self._stop.is_set():
            self._last_hold_ended()

    def _publish(self, session: _Session, hold: SyncHold | None) -> bool:
        """Note ``session``'s hold (``None``: it ended) and write every hold for the charm.

        Serialised, so an older picture never overwrites a newer one. Whether that ended the
        last hold.
        """
        with self._publishing:
            if hold is None:
                ended = self._holds.pop(session, None) is not None
            else:
                ended = False
                self._holds[session] = hold
            self._write_holds()
            return ended and not self._holds

    def _write_holds(self) -> None:
        """Write the holds (with ``_publishing`` held); a failure is logged, the hold goes on."""
        try:
            sync_holds.publish(self._state_dir, tuple(self._holds.values()))
        except OSError as error:
            _log("sync-holds-unpublished", error=str(error))

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

    def _keep(self, semaphore: FairSemaphore, lease: Lease, session: _Session) -> str | None:
        """Hold until released, the client gone or the worker stopping; why it was lost, if.

        A loss (the lease, or the key's deletion as the watch sees it) ends the wait at once.
        Each lease refresh is passed on to a guarded client (``valid``): if this worker stops
        refreshing without a word (paused), the client ends its command before the expiry.
        """
        end = session.end
        key_gone = threading.Event()
        threading.Thread(
            target=self._watch_key, args=(semaphore, end, key_gone), name="sync-key", daemon=True
        ).start()
        while not end.wait(_WAKE_INTERVAL):
            session.renew()
            if lease.lost.is_set():
                return f"lease lost: {lease.lost_reason}"
            if key_gone.is_set():
                return _KEY_GONE
        if self._stop.is_set():
            return "the worker stopped during the hold"
        try:
            if not semaphore.still_held():
                return _KEY_GONE
        except EtcdError as error:
            return f"etcd could not confirm the hold: {error}"
        return None

    def _watch_key(
        self, semaphore: FairSemaphore, end: threading.Event, gone: threading.Event
    ) -> None:
        """Set ``gone`` when the hold's key is deleted after its grant; stops with the hold.

        A broken watch just stops: the lease's own checks and the read at the end remain.
        """
        stream = self._client.watch(
            keys=[semaphore.key], start_revision=semaphore.revision + 1, deletes_only=True
        )
        try:
            while not end.is_set():
                if stream.next(timeout=_WAKE_INTERVAL):
                    gone.set()
                    return
        except WatchBrokenError:
            return
        finally:
            stream.close()

    def _end_command(self, session: _Session, lost: str | None) -> None:
        """Before the key goes: end every process of the guarded command's session, if any.

        The client is told first when the hold ended before its release, so that the SIGTERM
        the command gets reads as the loss it is.
        """
        command = session.stop_guarding()
        if command is None:
            return
        if lost is not None and not session.released.is_set():
            session.send(Reply(outcome="lost", lost=lost))
        left = command.end()
        _log("sync-command-ended", session=command.leader, left=left)

    def _end(self, semaphore: FairSemaphore, lease: Lease) -> None:
        """Remove the key and revoke the lease; both expire by themselves if etcd is away."""
        try:
            semaphore.release()
            lease.revoke()
        except EtcdError as error:
            _log("sync-release-failed", error=str(error), expires_within=self._lease_ttl)


class _Session:
    """One client connection: its request, its release, its command, and the replies to it."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self.end = threading.Event()
        """Set when the client releases, goes away, or the worker stops."""
        self.released = threading.Event()
        """Set when the client asked for the release (then it waits for the answer)."""
        self.thread = threading.current_thread()
        self._buffer = b""
        self._peer = 0
        self._sending = threading.Lock()
        self._guarding = threading.Lock()
        """Orders a guard against the grant and the hold's end (and their replies)."""
        self._granted = False
        self._over = False
        self._command: command_session.Session | None = None
        self._until: Callable[[], float] = time.monotonic
        """Until when the hold is certain (its lease's expiry, ``CLOCK_MONOTONIC``)."""
        self._told_until = 0.0

    def check_peer(self) -> None:
        """Only root, or the worker's own user, may hold the lock."""
        raw = self._connection.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_SO_PEERCRED_FORMAT)
        )
        pid, uid, _ = struct.unpack(_SO_PEERCRED_FORMAT, raw)
        if uid not in (0, os.geteuid()):
            raise _RefusedError("refused", f"uid {uid} may not hold the lock")
        self._peer = pid

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

    def grant(self, token: int, until: Callable[[], float]) -> None:
        """Tell the client it holds; from now on it may guard a command.

        ``until`` says, at any time, until when the hold is certain (told to a guarded client).
        """
        with self._guarding:
            self._granted = True
            self._until = until
            self.send(Reply(outcome="granted", token=token))

    def renew(self) -> None:
        """Tell a guarded client the hold's new certain end, once for each lease refresh.

        Never behind a renewal it has not read yet: a client that reads nothing (stopped by
        ^Z) would fill the connection's buffer (some 280 lines) and block this hold's thread
        in ``sendall``, where it could neither see a loss nor end the command. The newest end
        is sent as soon as the client has read the one before.
        """
        with self._guarding:
            until = self._until()
            if self._command is None or self._over or until == self._told_until:
                return
            if _unread(self._connection) > 0:
                return
            self._told_until = until
            self.send(Reply(outcome="valid", until=until))

    def stop_guarding(self) -> command_session.Session | None:
        """The hold ends: no command may be guarded from now on; the one that is, if any."""
        with self._guarding:
            self._over = True
            return self._command

    def watch_for_release(self) -> None:
        """From now on, read the client's lines in a thread: ``release``, ``guard``, the end."""
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
                request = parse_hold_line(line)
            except ValueError as error:
                self.send(Reply(outcome="error", error="bad-request", message=str(error)))
                continue
            if isinstance(request, GuardRequest):
                self._guard(request)
                continue
            self.released.set()
            self.end.set()

    def _guard(self, request: GuardRequest) -> None:
        """Take on the command's session, or say why not (the hold goes on either way)."""
        with self._guarding:
            refusal = self._unguardable(request)
            if refusal is None:
                self._command = command_session.Session(request.pid, request.start)
                self._told_until = self._until()
                _log("sync-command-guarded", session=request.pid)
                self.send(Reply(outcome="guarding", until=self._told_until))
            else:
                self.send(Reply(outcome="error", error="bad-request", message=refusal))

    def _unguardable(self, request: GuardRequest) -> str | None:
        """Why this command cannot be guarded, if it cannot.

        Only a session that the client's own child leads, named before the hold ends: the
        worker signals it as root, so it must be the caller's and no one else's.
        """
        if not self._granted or self._over:
            return "no hold to guard a command with"
        if self._command is not None:
            return "a command is guarded already"
        found = command_session.stat(request.pid)
        if (
            found is None
            or found.session != request.pid
            or found.start != request.start
            or found.parent != self._peer
        ):
            return f"process {request.pid} is not a session leader started by the client"
        return None

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
        """One reply line, whole (threads take turns; a client gone is not an error of ours)."""
        with self._sending, contextlib.suppress(OSError):
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


def _unread(connection: socket.socket) -> int:
    """Bytes sent on ``connection`` that its peer has not read yet (``SIOCOUTQ``)."""
    queued = fcntl.ioctl(connection.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", queued)[0])


def _clear(path: Path) -> None:
    """Remove whatever is at ``path``: a stale socket, or a file, link or directory in the way.

    ``path`` is in the unit's own directory (0700, the worker's), so nothing there is anyone
    else's; left in place, it would keep the worker from listening for good (``EADDRINUSE``).
    """
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(found.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()
