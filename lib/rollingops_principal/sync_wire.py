"""The sync lock's wire: JSON lines over the worker's Unix socket, and the client of it.

The socket is served by the rollingops worker of the unit next to the caller (a root-only file
in the unit's own directory). One connection is one synchronous hold:

    client: {"op": "acquire", "timeout": 30, "holder": "stop hook", "context": "hook"}
    worker: {"outcome": "granted", "token": 1234}             (or an error, then it closes)
    client: {"op": "release"}                                  (or it closes the connection)
    worker: {"outcome": "released", "lost": null}

The worker releases the hold when the client says so *or when the connection drops*, so a
killed caller never leaves the lock held.

A client that runs a command under the hold (``rollingops-lock``) also names it, before the
command runs, so that the worker ends the command's session before it lets the lock go, however
the hold ends (added later; a worker that predates it answers ``bad-request`` and holds on):

    client: {"op": "guard", "pid": 4321, "start": 987654}      (the session's leader, waiting)
    worker: {"outcome": "guarding", "until": 5123.4}           (or an error; the hold goes on)
    worker: {"outcome": "valid", "until": 5133.4}              (unprompted, at each lease refresh)
    worker: {"outcome": "lost", "lost": "lease lost: ..."}     (unprompted, if the hold ends)

``until`` is a ``CLOCK_MONOTONIC`` time (worker and client share the machine's clock) before
which the hold's lease cannot expire: its TTL counted from before its last refresh. A worker
that stops refreshing (paused, starved) cannot say ``lost`` either; a client that sees ``until``
come near without a new ``valid`` ends its command itself. Only a guarded hold gets these
unprompted lines, and one ``lost`` at most, so a client that never guards reads exactly what
it did before. Every line is at most ``MAX_LINE`` bytes; what the
worker cannot parse gets ``{"outcome": "error", "error": "bad-request", ...}`` and changes
nothing. This module is shared by the worker (server side) and by callers (``SyncLockClient``):
it imports no ops, so a plain script can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import (
    SyncLockError,
    SyncLockLostError,
    SyncLockTimeoutError,
    SyncLockUnavailableError,
)
from .untrusted_json import loads

MAX_LINE = 4096
"""Longest line either side may send, newline included."""
MAX_TIMEOUT = 3600.0
REPLY_MARGIN = 10.0
"""Seconds a client waits for the worker's answer beyond its own timeout."""
_T = TypeVar("_T")
_MAX_SOCKET_PATH = 100
"""``sun_path`` holds 108 bytes; a longer path is reached through its directory's fd."""

Context = Literal["hook", "command"]
"""Who holds: a hook (which holds the Juju machine lock) or a command on the machine."""
ErrorKind = Literal["bad-request", "timeout", "unavailable", "refused", "busy", "lost", "stopping"]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def line(self) -> bytes:
        """The message as one line on the wire."""
        return self.model_dump_json(exclude_none=True).encode() + b"\n"


class AcquireRequest(_Wire):
    """The first line of a connection: hold the lock, waiting at most ``timeout`` seconds."""

    op: Literal["acquire"] = "acquire"
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)]
    holder: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x20-\x7e]+$")]
    """A label for logs and ``lock-status`` (printable ASCII)."""
    context: Context


class ReleaseRequest(_Wire):
    """End the hold now."""

    op: Literal["release"] = "release"


class GuardRequest(_Wire):
    """During a hold: the command run under it leads the session ``pid`` (started at ``start``).

    The worker ends that session's processes before the hold's key goes, whatever ends the
    hold; it answers ``guarding`` before the command may run.
    """

    op: Literal["guard"] = "guard"
    pid: Annotated[int, Field(gt=1, le=2**22)]
    start: Annotated[int, Field(ge=0)]
    """The leader's start time (``/proc/<pid>/stat``, clock ticks after boot): pids get reused."""


HoldLine = Annotated[ReleaseRequest | GuardRequest, Field(discriminator="op")]
"""What a client may send once its first line was read."""
_HOLD_LINE: TypeAdapter[ReleaseRequest | GuardRequest] = TypeAdapter(HoldLine)


class Reply(_Wire):
    """The worker's answer: a grant, a release, or an error (then the connection closes)."""

    outcome: Literal["granted", "released", "error", "guarding", "valid", "lost"]
    token: int | None = None
    """The fencing token of a grant."""
    until: float | None = None
    """``guarding``, ``valid``: the ``CLOCK_MONOTONIC`` time before which the hold is certain."""
    lost: str | None = None
    """Why a hold ended before its release (``released``, and the notice ``lost``)."""
    error: ErrorKind | None = None
    message: str = ""


def parse_line(line: bytes, model: type[_Wire]) -> _Wire:
    """One wire line as ``model``; ``ValueError`` with a reason for anything else."""
    return _parsed(line, model.model_validate)


def parse_hold_line(line: bytes) -> ReleaseRequest | GuardRequest:
    """A line a client sends during its hold; ``ValueError`` with a reason for anything else."""
    return _parsed(line, _HOLD_LINE.validate_python)


def _parsed(line: bytes, validate: Callable[[object], _T]) -> _T:
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise ValueError(f"a line must end with a newline within {MAX_LINE} bytes")
    try:
        document = loads(line.decode("utf-8"), "line", max_bytes=MAX_LINE, max_depth=4)
        return validate(document)
    except UnicodeDecodeError as error:
        raise ValueError("a line must be UTF-8") from error
    except ValidationError as error:
        raise ValueError(_reason(error)) from error


def _reason(error: ValidationError) -> str:
    """The first complaint of a validation, as ``field: message``."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "line"
    return f"{where}: {first['msg']}"


def request(timeout: float, holder: str, context: Context) -> AcquireRequest:
    """The first line of a hold; ``ValueError`` (``invalid <field>: ...``) for a bad argument.

    A caller that tells usage errors apart (``rollingops-lock`` exits 64) checks here first.
    """
    try:
        return AcquireRequest(timeout=timeout, holder=holder, context=context)
    except ValidationError as error:
        first = error.errors()[0]
        raise ValueError(f"invalid {first['loc'][0]}: {first['msg']}") from error


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits ``sun_path`` (through the directory's fd if long)."""
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        yield str(path)
        return
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


class SyncGrant:
    """A synchronous hold of the lock: its fencing token, and how it ends.

    ``release`` ends it (the connection's close does too). Use it through ``hold``, or
    ``RollingOps.sync_lock`` in a charm.
    """

    def __init__(self, connection: socket.socket, token: int) -> None:
        self._connection = connection
        self.token = token
        self.released = False

    def forget_in_child(self) -> None:
        """In a forked child: drop this process's copy of the connection.

        The hold must end when the process that asked for it ends; a child keeping the
        connection open would keep it held.
        """
        os.close(self._connection.fileno())

    def fileno(self) -> int:
        """The connection's descriptor, to wait for the worker's ``lost`` notice (``select``)."""
        return self._connection.fileno()

    def guard(self, pid: int, start: int) -> float | None:
        """Have the worker end the session ``pid`` leads before the hold ends; wait for its yes.

        The yes says until when the hold is certain (``CLOCK_MONOTONIC``; ``None`` from a
        worker that does not say). ``SyncLockError`` if it says no (a worker that predates
        guarding says ``bad-request``).
        """
        try:
            self._connection.sendall(GuardRequest(pid=pid, start=start).line())
            reply = _read_reply(self._connection, REPLY_MARGIN)
        except OSError as error:
            raise SyncLockLostError(f"the worker ended the hold: {error}") from error
        if reply.outcome != "guarding":
            raise SyncLockError(f"the worker cannot guard the command: {reply.message}")
        return reply.until

    def notice(self) -> Reply:
        """The worker's next unprompted line during a guarded hold: ``valid`` or ``lost``.

        Call it once the connection is readable. ``SyncLockLostError`` if the worker went away
        without a word (killed): the hold is gone, or will be at its lease's expiry.
        """
        try:
            return _read_reply(self._connection, REPLY_MARGIN)
        except (OSError, SyncLockError) as error:
            raise SyncLockLostError(
                f"the worker ended the hold without a word: {error}"
            ) from error

    def release(self) -> None:
        """Give the lock back; raise ``SyncLockLostError`` if the hold had ended before.

        Releasing again does nothing: a hold ends once.
        """
        if self.released:
            return
        self.released = True
        try:
            self._connection.sendall(ReleaseRequest().line())
            reply = _read_reply(self._connection, REPLY_MARGIN)
            while reply.outcome == "valid":  # a renewal sent before the release was read
                reply = _read_reply(self._connection, REPLY_MARGIN)
        except (OSError, SyncLockError) as error:
            raise SyncLockLostError(
                f"the worker ended the hold before its release: {error}"
            ) from error
        finally:
            self._connection.close()
        if reply.outcome == "lost":  # told before the release, not read by the caller
            raise SyncLockLostError(f"the lock was lost during the hold: {reply.lost}")
        if reply.outcome != "released":
            raise SyncLockLostError(f"the worker did not confirm the release: {reply.message}")
        if reply.lost is not None:
            raise SyncLockLostError(f"the lock was lost during the hold: {reply.lost}")


def acquire(path: Path, timeout: float, holder: str, context: Context) -> SyncGrant:
    """Hold the lock through the worker at ``path``; wait at most ``timeout`` seconds.

    Raises ``SyncLockTimeoutError`` when the wait ran out (the worker left nothing in etcd),
    ``SyncLockUnavailableError`` when no worker answers there or it cannot grant now, and
    ``SyncLockError`` for anything else the worker refused, with its reason.
    """
    try:
        first_line = request(timeout, holder, context)
    except ValueError as error:
        raise SyncLockError(str(error)) from error
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A worker that accepts nothing (stopped, its backlog full) must not hang a hook.
        connection.settimeout(REPLY_MARGIN)
        with reachable(path) as address:
            connection.connect(address)
        connection.sendall(first_line.line())
        reply = _read_reply(connection, timeout + REPLY_MARGIN)
    except OSError as error:
        connection.close()
        raise SyncLockUnavailableError(
            f"no rollingops worker answers at {path}: {error}"
        ) from error
    except BaseException:
        connection.close()
        raise
    if reply.outcome == "granted" and reply.token is not None:
        return SyncGrant(connection, reply.token)
    connection.close()
    raise _error_of(reply)


@contextlib.contextmanager
def hold(path: Path, timeout: float, holder: str, context: Context) -> Iterator[SyncGrant]:
    """``acquire`` for the length of a ``with`` block; released at its end, whatever happens.

    A loss reported at the release is raised unless the block itself raised (its exception
    is the one that matters then; the loss is in the worker's log).
    """
    grant = acquire(path, timeout, holder, context)
    try:
        yield grant
    except BaseException:
        with contextlib.suppress(SyncLockLostError):
            grant.release()
        raise
    grant.release()


def _read_reply(connection: socket.socket, timeout: float) -> Reply:
    """The worker's next line within ``timeout`` seconds in all; else an error with a reason.

    It takes that line and nothing after it: a worker's ``lost`` notice may follow its reply
    at once, and is the next call's to read.
    """
    deadline = time.monotonic() + timeout
    line = b""
    try:
        while not line.endswith(b"\n") and len(line) <= MAX_LINE:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            connection.settimeout(left)
            chunk = connection.recv(MAX_LINE + 1 - len(line), socket.MSG_PEEK)
            if not chunk:
                raise SyncLockError("the worker closed the connection (stopped or restarted)")
            newline = chunk.find(b"\n")
            line += connection.recv(len(chunk) if newline < 0 else newline + 1)
    except TimeoutError as error:
        raise SyncLockError(f"the worker did not answer within {timeout:.0f} s") from error
    try:
        reply = parse_line(line, Reply)
    except ValueError as error:
        raise SyncLockError(f"unreadable answer from the worker: {error}") from error
    assert isinstance(reply, Reply)  # noqa: S101 - parse_line returns the model it is given
    return reply


def _error_of(reply: Reply) -> SyncLockError:
    message = reply.message or json.dumps(reply.model_dump(exclude_none=True))
    if reply.error == "timeout":
        return SyncLockTimeoutError(message)
    if reply.error in ("unavailable", "stopping", "busy"):
        return SyncLockUnavailableError(message)
    return SyncLockError(message)
