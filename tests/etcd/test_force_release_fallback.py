"""Force-release of a holder whose lease another application has made unrevocable.

etcd before 3.4.44 / 3.5.30 / 3.6.11 lets another application bind its own key to our lease
inside a transaction (docs/lease-isolation.md). Revoking the lease then needs write permission on
that key, which we lack, so the revoke is refused. Deleting our own waiter key always works, and
is what frees the lock then.
"""

from __future__ import annotations

import threading

import pytest
from etcd_helpers import wait_until
from test_lease_isolation import OTHER_PREFIX, OtherApplication, fixed_in, other
from testbed.etcd import EtcdCluster

from rollingops.control import DomainControl
from rollingops.etcd_client import EtcdClient, EtcdPermissionError
from rollingops.lease import Lease
from rollingops.semaphore import FairSemaphore
from rollingops.store import waiters_prefix

__all__ = ["other"]  # the fixture of test_lease_isolation: another application's etcd user

TTL = 30
"""Far longer than a test: only a release or the force-release may free the lock."""


@pytest.fixture(autouse=True)
def _attach_possible() -> None:
    if fixed_in((3, 4, 44), (3, 5, 30), (3, 6, 11)):
        pytest.skip("this etcd refuses to bind another user's key to our lease in a txn")


def holder(client: EtcdClient, etcd: EtcdCluster, owner: str, ttl: int = TTL) -> FairSemaphore:
    semaphore = FairSemaphore(client, waiters_prefix(etcd.prefix), 1, Lease(client, ttl), owner)
    semaphore.acquire(timeout=5)
    return semaphore


def poison(client: EtcdClient, other: OtherApplication, semaphore: FairSemaphore) -> None:
    """Bind the other application's key to the holder's lease; our revoke is refused from then."""
    lease = semaphore._lease.id
    other.put_in_txn(OTHER_PREFIX + "squat", lease)
    with pytest.raises(EtcdPermissionError):
        client.revoke_lease(lease)


class Next:
    """The next contender, waiting in a thread."""

    def __init__(self, client: EtcdClient, etcd: EtcdCluster, owner: str) -> None:
        self.semaphore = FairSemaphore(
            client, waiters_prefix(etcd.prefix), 1, Lease(client, TTL), owner
        )
        self.tokens: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.tokens.append(self.semaphore.acquire(timeout=60)), daemon=True
        )
        self.thread.start()
        control = DomainControl(client, etcd.prefix, 1)
        wait_until(lambda: control.position(owner) == 1, what=f"{owner} waiting")

    def acquired(self) -> int:
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "the next contender did not get the lock"
        (token,) = self.tokens
        return token


def test_force_release_frees_a_holder_whose_lease_another_application_pinned(
    etcd: EtcdCluster, client: EtcdClient, other: OtherApplication
) -> None:
    stuck = holder(client, etcd, "stuck/0")
    poison(client, other, stuck)
    following = Next(client, etcd, "next/0")
    control = DomainControl(client, etcd.prefix, 1)

    assert control.force_release("stuck/0") == [stuck.token]

    assert following.acquired() > stuck.revision
    assert not stuck.still_held(), "the stuck holder's key must be gone"
    assert [c.owner for c in control.contenders()] == ["next/0"]


def test_force_release_says_whether_it_revoked_the_lease_or_deleted_the_key(
    etcd: EtcdCluster, client: EtcdClient, other: OtherApplication
) -> None:
    control = DomainControl(client, etcd.prefix, 1)
    plain = holder(client, etcd, "plain/0", ttl=3)  # its lease thread looks every second
    (released,) = control.release_holders("plain/0")
    assert (released.owner, released.token, released.how) == (
        "plain/0",
        plain.token,
        "lease-revoked",
    )
    assert plain._lease.lost.wait(5), "a revoked lease tells its holder"

    stuck = holder(client, etcd, "stuck/0")
    poison(client, other, stuck)
    (released,) = control.release_holders("stuck/0")
    assert (released.owner, released.token, released.how) == (
        "stuck/0",
        stuck.token,
        "key-deleted",
    )
    assert not stuck.still_held()
    assert control.release_holders("stuck/0") == []
