"""A small, typed etcd v3 client: gRPC over mTLS, bounded calls, one key prefix.

Why not a full client library: the lock needs exact control over deadlines, failover between
endpoints, watch metadata and request counts, and nothing more. The wire format comes from the
generated stubs of ``etcd-sdk-python`` (``pyetcd.etcdrpc``); everything that could be swapped
for another client stays behind this module.

Guarantees:
- every call fails within ``total_timeout`` (default 5 s), whatever the cluster does;
- only errors of one member (unreachable, no answer in time, no leader, too many requests
  while it catches up...) are retried, on the next endpoint, and one hung endpoint gets only its
  share of that bound, so the others are still asked; the cluster's own refusals fail at once;
- a watch on a member that hangs breaks within ``KEEPALIVE_INTERVAL + PING_TIMEOUT`` (9 s), so
  the caller re-reads and watches again on another member;
- no key outside ``prefix`` is ever sent: the client refuses before talking to etcd.
"""

from __future__ import annotations

import collections
import enum
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pyetcd import etcdrpc  # pyright: ignore[reportMissingTypeStubs]
from pyetcd.etcdrpc import kv_pb2  # pyright: ignore[reportMissingTypeStubs]

_T = TypeVar("_T")

_LEASE_EXISTS = "lease already exists"

_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Codes that always mean "this member did not serve": no connection, no answer in time, or
one of etcd's own UNAVAILABLE errors (no leader, leader changed, request timed out, server
stopped, unhealthy cluster, rpc not supported for learner, not capable)."""
_MEMBER_BUSY: dict[grpc.StatusCode, tuple[str, ...]] = {
    # etcd 3.4 and 3.5 map ErrTooManyRequests (commit index more than 5000 entries ahead of
    # apply: a member catching up, or stuck after applying a snapshot until another entry
    # arrives) to a client-side error, which gRPC sends as UNKNOWN; the error table says
    # RESOURCE_EXHAUSTED, which also covers "database space exceeded" (the cluster's alarm,
    # the same on every member), so only the message tells.
    grpc.StatusCode.UNKNOWN: (
        "etcdserver: too many requests",
        "context deadline exceeded",
        "request timed out",
        "leader changed",
        "no leader",
        "timed out waiting for read index",
    ),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("etcdserver: too many requests",),
    # Lease calls a member that lost its leadership cannot serve (etcd's ErrGRPCNotLeader).
    grpc.StatusCode.FAILED_PRECONDITION: ("etcdserver: not leader",),
}
"""Errors of one member that another member may not have, by code and then message (etcd's
``api/v3rpc/rpctypes/error.go`` and the mapping in ``server/etcdserver/api/v3rpc/util.go``).
Every other error (permission denied, invalid argument, lease not found, a full database) is
the cluster's answer, the same on every member: it fails the call at once."""


def member_cannot_serve(code: grpc.StatusCode, details: str) -> bool:
    """Whether an error means "this member cannot serve now", so the next one is asked."""
    return code in _UNREACHABLE or any(text in details for text in _MEMBER_BUSY.get(code, ()))


def _is_transient(error: grpc.RpcError) -> bool:
    call = cast("grpc.Call", error)
    return member_cannot_serve(call.code(), call.details() or "")


KEEPALIVE_INTERVAL = 6.0
"""Seconds between HTTP/2 pings on a connection with an open call (a watch).

etcd's server-side policy (``--grpc-keepalive-min-time``, default 5 s; no pings at all on a
connection without streams) answers more frequent pings with GOAWAY ``too_many_pings`` where
grpc-go enforces it; 6 s keeps a margin over the 5 s for scheduling jitter. etcd 3.4.23 and
3.5.1 behind TLS serve gRPC through Go's HTTP/2 server, which enforces nothing (1 s pings for
15 s were measured to pass); the margin is for the listeners and builds that do enforce it."""
PING_TIMEOUT = 3.0
"""Seconds a ping may go unanswered before the connection, and every watch on it, is dropped.

A frozen (SIGSTOPped, hung) member keeps its TCP connection open, so only an unanswered ping
tells. A hung member is noticed within ``KEEPALIVE_INTERVAL + PING_TIMEOUT`` = 9 s: measured
3.2 to 9.0 s over 12 freezes after 0 to 14 s of idling, etcd 3.5.1 and 3.4.23 (with grpc's
defaults, never during a 40 s freeze). A false alarm on a slow but live member costs one re-read
and a new watch on another member."""

_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", int(KEEPALIVE_INTERVAL * 1000)),
    # grpcio 1.85 times an outstanding keepalive ping with this, not keepalive_timeout_ms (its
    # trace shows "ping timeout timer of 60000ms" whatever keepalive_timeout_ms says).
    ("grpc.http2.ping_timeout_ms", int(PING_TIMEOUT * 1000)),
    ("grpc.keepalive_timeout_ms", int(PING_TIMEOUT * 1000)),
    # An idle watch sends no data; with the default (2) pings stop after the second one, so a
    # member that froze later was never noticed.
    ("grpc.http2.max_pings_without_data", 0),
    # Ping only while a call is open: unary calls have their own deadlines, and etcd's policy
    # (PermitWithoutStream false) counts pings on a connection without streams as abuse.
    ("grpc.keepalive_permit_without_calls", 0),
)
MIN_ATTEMPT_TIMEOUT = 0.25
"""Floor of one attempt's deadline when a call's budget is shared between endpoints: a healthy
member answers on a fresh TLS connection well within it, so a shared budget never starves the
attempt that would have succeeded."""
# Cancels a watch when its member loses the raft leader, so a partitioned member cannot keep a
# waiter listening to a cluster that has moved on.
_WATCH_METADATA = (("hasleader", "true"),)


class EtcdError(Exception):
    """Any failure talking to etcd."""


class EtcdUnavailableError(EtcdError):
    """No endpoint answered within the call's bound."""


class EtcdPermissionError(EtcdError):
    """etcd refused the request: the client's user has no right to it."""


class WatchBrokenError(EtcdError):
    """A watch ended (stream reset, leader lost, revision compacted): re-read, then re-watch."""


class OutsidePrefixError(ValueError):
    """The caller asked for a key outside the client's prefix; nothing was sent."""


class EtcdSettings(BaseModel):
    """Where etcd is and who we are to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoints: Annotated[list[str], Field(min_length=1)]
    """``host:port`` of every member; all are used, in turn, when one fails."""
    ca_file: Path
    cert_file: Path
    key_file: Path
    prefix: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._/-]*/$", max_length=256)]
    """Every key this client touches starts with it (charmed-etcd grants RBAC on it)."""
    call_timeout: Annotated[float, Field(gt=0, le=60)] = 2.0
    """Deadline of one attempt on one endpoint."""
    total_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    """Bound on a whole call, retries and failover included."""

    @field_validator("endpoints")
    @classmethod
    def _host_port(cls, endpoints: list[str]) -> list[str]:
        for endpoint in endpoints:
            host, _, port = endpoint.rpartition(":")
            if not host or not port.isdigit() or "/" in endpoint:
                raise ValueError(f"endpoint {endpoint!r} is not host:port")
        return endpoints


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd stores it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class RangeResult:
    """Keys read at one revision of the store."""

    kvs: list[KeyValue]
    revision: int


@dataclass(frozen=True)
class TxnResult:
    """Outcome of a transaction: which branch ran, and what its range operations read."""

    succeeded: bool
    revision: int
    ranges: list[list[KeyValue]]


class EventKind(enum.Enum):
    """What happened to a watched key."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    """One change seen by a watch."""

    kind: EventKind
    key: str
    value: bytes
    mod_revision: int


def prefix_end(prefix: str) -> bytes:
    """The exclusive end of the key range that starts with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


class Compare:
    """Conditions of a transaction."""

    @staticmethod
    def missing(key: str) -> Any:
        """The key does not exist."""
        return Compare.create_revision(key, 0)

    @staticmethod
    def create_revision(key: str, revision: int) -> Any:
        """The key was created at ``revision`` (0: does not exist)."""
        cmp = etcdrpc.Compare(key=key.encode(), create_revision=revision)
        cmp.target = etcdrpc.Compare.CREATE
        cmp.result = etcdrpc.Compare.EQUAL
        return cmp

    @staticmethod
    def none_created_after(prefix: str, revision: int) -> Any:
        """No key under ``prefix`` was created after ``revision`` (an empty range holds too).

        etcd compares every key of a range; deleted keys leave no trace, so this proves only
        that nothing was added since a read at ``revision``.
        """
        cmp = etcdrpc.Compare(
            key=prefix.encode(), range_end=prefix_end(prefix), create_revision=revision + 1
        )
        cmp.target = etcdrpc.Compare.CREATE
        cmp.result = etcdrpc.Compare.LESS
        return cmp

    @staticmethod
    def mod_revision(key: str, revision: int) -> Any:
        """The key was last written at ``revision``."""
        cmp = etcdrpc.Compare(key=key.encode(), mod_revision=revision)
        cmp.target = etcdrpc.Compare.MOD
        cmp.result = etcdrpc.Compare.EQUAL
        return cmp


class Op:
    """Operations of a transaction."""

    @staticmethod
    def put(key: str, value: bytes, lease: int = 0) -> Any:
        """Write ``value`` at ``key`` (bound to ``lease`` when non-zero)."""
        return etcdrpc.RequestOp(
            request_put=etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease)
        )

    @staticmethod
    def delete(key: str) -> Any:
        """Remove ``key``."""
        return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=key.encode()))

    @staticmethod
    def get(key: str) -> Any:
        """Read ``key``."""
        return etcdrpc.RequestOp(request_range=_range_request(key))

    @staticmethod
    def get_prefix(prefix: str) -> Any:
        """Read every key under ``prefix``, oldest first (ascending create revision)."""
        return etcdrpc.RequestOp(request_range=_range_request(prefix, prefix_end(prefix)))


def _range_request(key: str, range_end: bytes | None = None) -> Any:
    request = etcdrpc.RangeRequest(key=key.encode())
    if range_end is not None:
        request.range_end = range_end
        request.sort_target = etcdrpc.RangeRequest.CREATE
        request.sort_order = etcdrpc.RangeRequest.ASCEND
    return request


def _key_values(kvs: Any) -> list[KeyValue]:
    return [
        KeyValue(
            key=kv.key.decode(),
            value=bytes(kv.value),
            create_revision=kv.create_revision,
            mod_revision=kv.mod_revision,
            lease=kv.lease,
        )
        for kv in kvs
    ]


def _read_file(path: Path) -> bytes:
    return path.read_bytes()


@dataclass
class _Endpoint:
    address: str
    channel: grpc.Channel
    kv: Any
    lease: Any
    watch: Any
    maintenance: Any


class EtcdClient:
    """Bounded calls to one etcd cluster, confined to one key prefix.

    ``requests`` counts every round trip sent (retries included) by method, which is what the
    benchmarks report as etcd requests; ``events_received`` counts the watch events its streams
    delivered, which is what a release costs the waiters that did not need to wake.
    """

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self.prefix = settings.prefix
        self.requests: collections.Counter[str] = collections.Counter()
        self.events_received = 0
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_file(settings.ca_file),
            private_key=_read_file(settings.key_file),
            certificate_chain=_read_file(settings.cert_file),
        )
        self._endpoints = [self._connect(address, credentials) for address in settings.endpoints]
        self._current = 0
        self._lock = threading.Lock()

    @staticmethod
    def _connect(address: str, credentials: grpc.ChannelCredentials) -> _Endpoint:
        channel = grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
        return _Endpoint(
            address=address,
            channel=channel,
            kv=etcdrpc.KVStub(channel),
            lease=etcdrpc.LeaseStub(channel),
            watch=etcdrpc.WatchStub(channel),
            maintenance=etcdrpc.MaintenanceStub(channel),
        )

    def close(self) -> None:
        """Close every channel; open watches end."""
        for endpoint in self._endpoints:
            endpoint.channel.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def check_key(self, key: str) -> str:
        """Return ``key`` if it lies under the prefix; refuse it otherwise."""
        if not key.startswith(self.prefix):
            raise OutsidePrefixError(f"key {key!r} is outside prefix {self.prefix!r}")
        return key

    @property
    def endpoint(self) -> str:
        """The ``host:port`` that the next call and the next watch go to."""
        with self._lock:
            return self._endpoints[self._current].address

    def _call(self, method: str, call: Callable[[_Endpoint, float], _T]) -> _T:
        """Run ``call`` on the current endpoint, failing over on transient errors, bounded.

        The budget is shared: an attempt may take no more than its share of what is left among
        the endpoints not yet tried in this call, so one hung member cannot eat a hook's whole
        2 s budget before the healthy ones are asked.
        """
        deadline = time.monotonic() + self.settings.total_timeout
        backoff = 0.05
        last: grpc.RpcError | None = None
        tried: set[int] = set()
        while (remaining := deadline - time.monotonic()) > 0:
            with self._lock:
                index = self._current
                endpoint = self._endpoints[index]
            untried = len(self._endpoints) - len(tried - {index})
            timeout = attempt_timeout(self.settings.call_timeout, remaining, untried)
            tried.add(index)
            self.requests[method] += 1
            try:
                return call(endpoint, timeout)
            except grpc.RpcError as error:
                if not _is_transient(error):
                    raise _translate(method, error) from error
                last = error
                self._fail_over(endpoint)
            time.sleep(min(backoff, max(deadline - time.monotonic(), 0)))
            backoff = min(backoff * 2, 0.5)
        detail = cast("grpc.Call", last).details() if last is not None else "no attempt"
        raise EtcdUnavailableError(
            f"{method}: no etcd endpoint answered within {self.settings.total_timeout}s ({detail})"
        )

    def _fail_over(self, failed: _Endpoint) -> None:
        with self._lock:
            if self._endpoints[self._current] is failed:
                self._current = (self._current + 1) % len(self._endpoints)

    def server_version(self) -> str:
        """The etcd release of the member that answers (``3.5.1``), from Maintenance.Status.

        Any authenticated user may ask it; it is served by the member itself, not through raft.
        """
        request = etcdrpc.StatusRequest()
        response = self._call("status", lambda ep, t: ep.maintenance.Status(request, timeout=t))
        return response.version

    # -- key-value --------------------------------------------------------------------------

    def get(self, key: str) -> tuple[KeyValue | None, int]:
        """Read one key; also return the store revision of the read."""
        request = _range_request(self.check_key(key))
        response = self._call("range", lambda ep, t: ep.kv.Range(request, timeout=t))
        kvs = _key_values(response.kvs)
        return (kvs[0] if kvs else None), response.header.revision

    def get_prefix(self, prefix: str) -> RangeResult:
        """Read every key under ``prefix`` (itself under the client prefix), oldest first."""
        request = _range_request(self.check_key(prefix), prefix_end(prefix))
        response = self._call("range", lambda ep, t: ep.kv.Range(request, timeout=t))
        return RangeResult(_key_values(response.kvs), response.header.revision)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write one key; return the revision of the write."""
        request = etcdrpc.PutRequest(key=self.check_key(key).encode(), value=value, lease=lease)
        response = self._call("put", lambda ep, t: ep.kv.Put(request, timeout=t))
        return response.header.revision

    def delete(self, key: str) -> int:
        """Remove one key; return how many keys were removed (0 or 1)."""
        request = etcdrpc.DeleteRangeRequest(key=self.check_key(key).encode())
        response = self._call("delete", lambda ep, t: ep.kv.DeleteRange(request, timeout=t))
        return response.deleted

    def txn(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> TxnResult:
        """Run a transaction; all keys it names must lie under the prefix."""
        for item in (*compare, *success, *failure):
            self._check_message(item)
        request = etcdrpc.TxnRequest(compare=compare, success=success, failure=failure)
        response = self._call("txn", lambda ep, t: ep.kv.Txn(request, timeout=t))
        ranges = [
            _key_values(item.response_range.kvs)
            for item in response.responses
            if item.WhichOneof("response") == "response_range"
        ]
        return TxnResult(response.succeeded, response.header.revision, ranges)

    def _check_message(self, message: Any) -> None:
        if isinstance(message, etcdrpc.Compare):
            self.check_key(message.key.decode())
            return
        inner = getattr(message, message.WhichOneof("request"))
        self.check_key(inner.key.decode())

    # -- leases -----------------------------------------------------------------------------

    def grant_lease(self, ttl: int) -> int:
        """Create a lease of ``ttl`` seconds under a random id of our choosing; return the id.

        etcd's own ids are sequential (two grants differ by 2), so any client could guess the
        next one. A random 63-bit id cannot be guessed, though etcd lists every lease to every
        user anyway (docs/lease-isolation.md). Choosing the id also makes a retry idempotent:
        when an attempt that timed out had in fact been applied, the retry finds the lease
        already there, and that lease is ours, not a second one left to leak until its TTL.
        The caller must count the TTL from before this call, since a retry may answer later.
        """
        request = etcdrpc.LeaseGrantRequest(TTL=ttl, ID=random_lease_id())
        attempts = 0

        def grant(endpoint: _Endpoint, timeout: float) -> int:
            nonlocal attempts
            attempts += 1
            try:
                response = endpoint.lease.LeaseGrant(request, timeout=timeout)
            except grpc.RpcError as error:
                if attempts > 1 and _LEASE_EXISTS in (cast("grpc.Call", error).details() or ""):
                    return request.ID
                raise
            if response.error:
                raise EtcdError(f"lease grant refused: {response.error}")
            return response.ID

        return self._call("lease_grant", grant)

    def keep_alive(self, lease_id: int) -> int:
        """Refresh a lease once; return its remaining TTL (0 or less: it has expired)."""
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)

        def refresh(endpoint: _Endpoint, timeout: float) -> int:
            responses: Iterator[Any] = endpoint.lease.LeaseKeepAlive(
                iter([request]), timeout=timeout
            )
            for response in responses:
                return response.TTL
            return 0

        return self._call("lease_keepalive", refresh)

    def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease, deleting every key bound to it; an unknown lease is already gone."""
        request = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        try:
            self._call("lease_revoke", lambda ep, t: ep.lease.LeaseRevoke(request, timeout=t))
        except EtcdError as error:
            if "lease not found" not in str(error):
                raise

    # -- watches ----------------------------------------------------------------------------

    def watch(
        self,
        keys: Sequence[str] = (),
        prefix: str | None = None,
        start_revision: int = 0,
        deletes_only: bool = False,
    ) -> WatchStream:
        """Watch ``keys`` (each exactly) or everything under ``prefix``, from ``start_revision``.

        Starting at the revision just after a read closes the gap between reading and watching.
        """
        requests: list[Any] = []
        for key in keys:
            requests.append(_watch_create(self.check_key(key), None, start_revision, deletes_only))
        if prefix is not None:
            self.check_key(prefix)
            requests.append(
                _watch_create(prefix, prefix_end(prefix), start_revision, deletes_only)
            )
        with self._lock:
            endpoint = self._endpoints[self._current]
        self.requests["watch"] += len(requests)
        return WatchStream(
            endpoint.watch, requests, lambda: self._fail_over(endpoint), self._count_events
        )

    def _count_events(self, count: int) -> None:
        with self._lock:
            self.events_received += count


def attempt_timeout(call_timeout: float, remaining: float, untried: int) -> float:
    """Deadline of the next attempt of a call: its share of the budget left.

    ``untried`` counts the endpoints, the next one included, that this call has not asked yet;
    once every endpoint has been tried, an attempt may use all that is left. The share never
    goes under ``MIN_ATTEMPT_TIMEOUT`` (unless the budget itself is smaller), nor over
    ``call_timeout``.
    """
    share = remaining / untried if untried > 1 else remaining
    return min(call_timeout, remaining, max(share, MIN_ATTEMPT_TIMEOUT))


def random_lease_id() -> int:
    """A lease id nobody can guess: 63 random bits, never 0.

    etcd ids are positive int64; 0 would ask etcd to choose one.
    """
    return secrets.randbits(63) or 1


def _watch_create(
    key: str, range_end: bytes | None, start_revision: int, deletes_only: bool
) -> Any:
    create = etcdrpc.WatchCreateRequest(key=key.encode(), start_revision=start_revision)
    if range_end is not None:
        create.range_end = range_end
    if deletes_only:
        create.filters.append(etcdrpc.WatchCreateRequest.NOPUT)
    return etcdrpc.WatchRequest(create_request=create)


_CLOSE = object()


class WatchStream:
    """One gRPC watch stream, read by a daemon thread into a queue.

    ``next`` returns the events of one response, ``None`` when nothing came in time, and raises
    ``WatchBrokenError`` once the stream has ended for any reason other than ``close``.
    """

    def __init__(
        self,
        stub: Any,
        requests: list[Any],
        on_broken: Callable[[], None],
        on_events: Callable[[int], None],
    ) -> None:
        self._on_events = on_events
        self._outbox: queue.Queue[Any] = queue.Queue()
        for request in requests:
            self._outbox.put(request)
        self._inbox: queue.Queue[list[WatchEvent] | WatchBrokenError] = queue.Queue()
        self._closed = threading.Event()
        self._uncreated = len(requests)
        self._created = threading.Event()
        self._error: WatchBrokenError | None = None
        self._on_broken = on_broken
        self._call: Any = stub.Watch(self._requests(), metadata=_WATCH_METADATA)
        self._reader = threading.Thread(target=self._read, name="etcd-watch", daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[Any]:
        while (request := self._outbox.get()) is not _CLOSE:
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                if response.compact_revision:
                    raise WatchBrokenError(f"revision compacted at {response.compact_revision}")
                if response.canceled:
                    raise WatchBrokenError(f"watch canceled: {response.cancel_reason}")
                if response.created:
                    self._uncreated -= 1
                    if self._uncreated <= 0:
                        self._created.set()
                if response.events:
                    self._on_events(len(response.events))
                    self._inbox.put([_event(event) for event in response.events])
            raise WatchBrokenError("watch stream ended")
        except grpc.RpcError as error:
            if not self._closed.is_set():
                self._on_broken()
            self._broken(WatchBrokenError(f"watch stream failed: {error}"))
        except WatchBrokenError as error:
            self._broken(error)
        except Exception as error:  # a reader that dies silently would hang its waiter
            self._broken(WatchBrokenError(f"watch reader failed: {error!r}"))

    def _broken(self, error: WatchBrokenError) -> None:
        self._error = error
        self._inbox.put(error)
        self._created.set()

    def wait_created(self, timeout: float) -> None:
        """Block until etcd has acknowledged every watch of the stream.

        A watch created at the current revision is *synced*: etcd sends its events at once.
        Creating it before reading closes the read-to-watch gap without the up-to-100 ms delay
        etcd adds to a watch that starts from a past revision.
        """
        if not self._created.wait(timeout):
            # A member that never acknowledges is as good as hung: the next watch and the next
            # call go to another one, instead of waiting on it again.
            self.close()
            self._on_broken()
            raise WatchBrokenError(f"watch not created within {timeout}s")
        if self._error is not None:
            raise self._error

    def next(self, timeout: float | None) -> list[WatchEvent] | None:
        """Events of the next response, or ``None`` after ``timeout`` seconds without any."""
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, WatchBrokenError):
            self._inbox.put(item)
            raise item
        return item

    def close(self) -> None:
        """End the stream; safe to call more than once."""
        self._closed.set()
        self._outbox.put(_CLOSE)
        self._call.cancel()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _event(event: Any) -> WatchEvent:
    kind = EventKind.DELETE if event.type == kv_pb2.Event.DELETE else EventKind.PUT
    return WatchEvent(kind, event.kv.key.decode(), bytes(event.kv.value), event.kv.mod_revision)


def _translate(method: str, error: grpc.RpcError) -> EtcdError:
    call = cast("grpc.Call", error)
    detail = f"{method}: {call.code().name}: {call.details()}"
    if call.code() is grpc.StatusCode.PERMISSION_DENIED:
        return EtcdPermissionError(detail)
    return EtcdError(detail)
