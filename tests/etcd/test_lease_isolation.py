"""What another application on the same etcd can do to our leases (docs/lease-isolation.md).

charmed-etcd gives each client application a user whose role covers its own key prefix. etcd's
RBAC has no notion of lease ownership, though: these tests pin down, on the real builds, what a
second authenticated user (its own certificate, its own prefix, as charmed-etcd provisions it)
can and cannot do to our leases. They assert etcd's behaviour, hazards included, so that an etcd
upgrade that changes it fails here and the document gets revisited. Where etcd has announced a
fix, the expectation follows the build's version (``fixed_in``).

The last test checks the one mitigation we ship: lease ids chosen by us at random.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import grpc
import pytest
from etcd_helpers import settings_for, wait_until
from pyetcd import etcdrpc
from testbed import pki
from testbed.etcd import EtcdCluster, etcd_version

from rollingops.etcd_client import Compare, EtcdClient, EtcdPermissionError, Op

OTHER = "other-application"
OTHER_PREFIX = "/other-application/"


def version() -> tuple[int, ...]:
    return tuple(int(part) for part in etcd_version().split(".")[:3])


def fixed_in(*releases: tuple[int, int, int]) -> bool:
    """Whether the build under test has the fix etcd shipped in each of these patch releases
    (one per minor line, e.g. 3.4.26 and 3.5.9); a later minor line has it from its start."""
    current = version()
    for release in sorted(releases):
        if current[:2] == release[:2]:
            return current >= release
    return current[:2] > max(releases)[:2]


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _lease_ids(data: bytes) -> list[int]:
    """Decode a ``LeaseLeasesResponse`` (the generated stubs we use lack that message): field 2
    is each ``LeaseStatus``, whose field 1 is the id."""
    ids: list[int] = []
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        length, at = _varint(data, at)  # header (1) and leases (2) are both length-delimited
        if tag >> 3 == 2:
            _, inner = _varint(data, at)
            ids.append(_varint(data, inner)[0])
        at += length
    return ids


@dataclass
class OtherApplication:
    """Raw gRPC as another application's etcd user: every call is exactly one request."""

    channel: grpc.Channel

    def leases(self) -> list[int]:
        call = self.channel.unary_unary(
            "/etcdserverpb.Lease/LeaseLeases",
            request_serializer=lambda _: b"",  # LeaseLeasesRequest has no fields
            response_deserializer=_lease_ids,
        )
        return call(None, timeout=5)

    def time_to_live(self, lease: int, keys: bool = False) -> etcdrpc.LeaseTimeToLiveResponse:
        request = etcdrpc.LeaseTimeToLiveRequest(ID=lease, keys=keys)
        return etcdrpc.LeaseStub(self.channel).LeaseTimeToLive(request, timeout=5)

    def keep_alive(self, lease: int) -> int:
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease)
        stream = etcdrpc.LeaseStub(self.channel).LeaseKeepAlive(iter([request]), timeout=5)
        return next(iter(stream)).TTL

    def revoke(self, lease: int) -> None:
        request = etcdrpc.LeaseRevokeRequest(ID=lease)
        etcdrpc.LeaseStub(self.channel).LeaseRevoke(request, timeout=5)

    def grant(self, lease: int, ttl: int) -> None:
        request = etcdrpc.LeaseGrantRequest(ID=lease, TTL=ttl)
        etcdrpc.LeaseStub(self.channel).LeaseGrant(request, timeout=5)

    def put(self, key: str, lease: int) -> None:
        request = etcdrpc.PutRequest(key=key.encode(), value=b"x", lease=lease)
        etcdrpc.KVStub(self.channel).Put(request, timeout=5)

    def put_in_txn(self, key: str, lease: int) -> None:
        put = etcdrpc.PutRequest(key=key.encode(), value=b"x", lease=lease)
        request = etcdrpc.TxnRequest(success=[etcdrpc.RequestOp(request_put=put)])
        etcdrpc.KVStub(self.channel).Txn(request, timeout=5)


def denied(call: Callable[[], object]) -> bool:
    """Whether etcd refused the call for lack of permission (any other error is re-raised)."""
    try:
        call()
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.PERMISSION_DENIED:
            return True
        raise
    return False


@pytest.fixture
def other(etcd: EtcdCluster, tmp_path: Path) -> Iterator[OtherApplication]:
    """Another application of the same etcd, provisioned as charmed-etcd provisions ours."""
    etcd.add_user(OTHER, OTHER_PREFIX)
    cert_file, key_file = pki.write_pair(tmp_path, OTHER, etcd.ca.issue_client_cert(OTHER))
    credentials = grpc.ssl_channel_credentials(
        etcd.ca_file.read_bytes(), key_file.read_bytes(), cert_file.read_bytes()
    )
    channel = grpc.secure_channel(etcd.endpoints[0], credentials)
    try:
        other = OtherApplication(channel)
        other.put(OTHER_PREFIX + "sanity", 0)  # its own prefix is its own
        assert denied(lambda: other.put(etcd.prefix + "intrusion", 0))  # ours is not
        yield other
    finally:
        channel.close()


def test_another_application_lists_our_leases_and_reads_their_ttl(client, other):
    lease = client.grant_lease(30)
    assert lease in other.leases()
    status = other.time_to_live(lease)
    assert status.grantedTTL == 30
    assert 0 < status.TTL <= 30


def test_another_application_reads_our_key_names_through_a_lease_before_the_2023_fix(
    client, other
):
    """CVE-2023-32082: LeaseTimeToLive(keys=true) needs no read permission before 3.4.26/3.5.9.
    Then it reveals our waiter keys' names (the values stay hidden)."""
    lease = client.grant_lease(30)
    key = client.prefix + "waiters/holder"
    client.put(key, b"app/0", lease=lease)
    if fixed_in((3, 4, 26), (3, 5, 9)):
        assert denied(lambda: other.time_to_live(lease, keys=True))
    else:
        assert [bytes(name) for name in other.time_to_live(lease, keys=True).keys] == [
            key.encode()
        ]


def test_another_application_keeps_our_lease_alive_so_a_dead_holders_key_stays(client, other):
    """The hazard of issue 9: our holder is dead (nobody of ours refreshes the lease), yet its
    waiter key, which is the lock, outlives the TTL as long as anyone refreshes the lease."""
    ttl = 2
    lease = client.grant_lease(ttl)
    key = client.prefix + "waiters/dead-holder"
    client.put(key, b"app/0", lease=lease)
    until = time.monotonic() + 3 * ttl
    while time.monotonic() < until:
        assert other.keep_alive(lease) == ttl
        time.sleep(ttl / 4)
    assert client.get(key)[0] is not None
    # Once the other application stops, the lease runs out as usual.
    wait_until(lambda: client.get(key)[0] is None, timeout=4 * ttl, what="lease expired")


def test_another_application_cannot_revoke_our_lease_once_our_key_is_on_it(client, other):
    """Revoke needs write permission on every key the lease carries; a bare lease (between our
    grant and our first put on it) has none, so anybody may revoke it."""
    lease = client.grant_lease(30)
    client.put(client.prefix + "waiters/held", b"app/0", lease=lease)
    assert denied(lambda: other.revoke(lease))
    assert client.get(client.prefix + "waiters/held")[0] is not None

    bare = client.grant_lease(30)
    other.revoke(bare)
    assert bare not in other.leases()


def test_another_application_cannot_take_our_lease_id_while_it_lives(client, other):
    lease = client.grant_lease(30)
    with pytest.raises(grpc.RpcError) as refused:
        other.grant(lease, 5)
    assert "lease already exists" in str(refused.value)


def test_another_application_attaching_a_key_to_our_lease_makes_it_unrevocable(client, other):
    """A plain put bound to our lease is refused (the put would need write permission on our
    key). The same put inside a transaction was not checked before 3.4.44/3.5.30/3.6.11
    (GHSA-x35m-3gp4-4fh5): from then on we cannot revoke our own lease. Deleting our key, which
    is how a holder releases, still works: the lock itself cannot be pinned this way."""
    lease = client.grant_lease(30)
    key = client.prefix + "waiters/held"
    client.put(key, b"app/0", lease=lease)
    assert denied(lambda: other.put(OTHER_PREFIX + "squat", lease))
    if fixed_in((3, 4, 44), (3, 5, 30), (3, 6, 11)):
        assert denied(lambda: other.put_in_txn(OTHER_PREFIX + "squat", lease))
        return
    other.put_in_txn(OTHER_PREFIX + "squat", lease)
    with pytest.raises(EtcdPermissionError):
        client.revoke_lease(lease)
    assert client.delete(key) == 1


def test_another_application_attaching_a_key_to_our_bare_lease_poisons_it(client, other):
    """Between our grant and our first put, the lease carries nothing: a plain put of the other
    application's own key binds it. From then on our plain puts with the lease and our revoke
    are refused. Our transactions (the semaphore enters in one) were not checked before the
    2026 fix, and are refused after it."""
    lease = client.grant_lease(30)
    other.put(OTHER_PREFIX + "squat", lease)
    with pytest.raises(EtcdPermissionError):
        client.put(client.prefix + "waiters/mine", b"app/0", lease=lease)
    with pytest.raises(EtcdPermissionError):
        client.revoke_lease(lease)
    key = client.prefix + "waiters/entered"

    def enter() -> None:
        client.txn([Compare.missing(key)], [Op.put(key, b"app/0", lease)])

    if fixed_in((3, 4, 44), (3, 5, 30), (3, 6, 11)):
        with pytest.raises(EtcdPermissionError):
            enter()
    else:
        enter()
        assert client.get(key)[0] is not None


def test_our_lease_ids_are_random_so_nobody_can_guess_the_next_one(etcd, other):
    """etcd's own ids are sequential (consecutive grants differ by 2). Ours are 63 random bits.
    This closes guessing only: ``LeaseLeases`` still lists them to every user (first test)."""
    with EtcdClient(settings_for(etcd)) as client:
        ids = sorted(client.grant_lease(30) for _ in range(8))
    assert all(0 < lease < 2**63 for lease in ids)
    gaps = [later - earlier for earlier, later in pairwise(ids)]
    assert min(gaps) > 2**32, [f"{lease:016x}" for lease in ids]
    assert set(ids) <= set(other.leases())
