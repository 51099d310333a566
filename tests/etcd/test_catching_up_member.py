"""A member catching up after a pause refuses writes; calls go to another member (issue 19).

etcd refuses a write proposed through a member whose commit index is more than 5000 entries
ahead of the index it has applied (``maxGapBetweenApplyAndCommitIndex``): gRPC UNKNOWN,
"etcdserver: too many requests". A follower frozen while the others wrote more than that, and
sent a snapshot when it resumes (``--snapshot-count`` small, so the leader's log no longer
holds what it missed), is in that state, and stays in it: applying a snapshot does not move the
index that check reads, only the next entry applied does. With every writer pinned to that
member, no entry ever comes: before the fix, the client took the refusal for the cluster's
answer, never asked another member, and no operation ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from etcd_helpers import WorkerFarm, operation, settings_for, wait_until
from pyetcd import etcdrpc  # pyright: ignore[reportMissingTypeStubs]
from test_liveness_hung_member import avoiding, follower, frozen, pinned
from test_worker import events, finished
from testbed.etcd import EtcdCluster, EtcdMember

from rollingops.etcd_client import EtcdClient, EtcdError, member_cannot_serve
from rollingops.models import Outcome

pytestmark = pytest.mark.cluster

SNAPSHOT_COUNT = 6000
"""The leader snapshots after 6000 entries and keeps only the last 5000 of its log after that,
so a follower frozen near the start (about 500 entries written by provisioning) needs a
snapshot."""
MISSED = 7000
"""Entries written while the follower is frozen: past the snapshot, and 5000 + ahead of it."""
REFUSING_GAP = 5000
UNITS = ("app/0", "app/1", "app/2", "app/3")


@pytest.fixture
def lagging(
    need_etcd: None, tmp_path: Path
) -> Iterator[tuple[EtcdCluster, EtcdMember, WorkerFarm]]:
    """Three members, one that caught up from a snapshot and now refuses every write.

    Operations for ``UNITS`` are queued before it froze, so nothing is written afterwards.
    """
    with EtcdCluster(size=3, base_dir=tmp_path / "etcd", snapshot_count=SNAPSHOT_COUNT) as cluster:
        farm = WorkerFarm(cluster, tmp_path / "farm")
        farm.root.mkdir()
        member = follower(cluster)
        with EtcdClient(avoiding(cluster, member)) as client:
            for unit in UNITS:
                farm.enqueue(client, unit, operation("first"), operation("second", n=2))
            with frozen(member), ThreadPoolExecutor(16) as pool:
                key = cluster.prefix + "filler"
                list(pool.map(lambda i: client.put(f"{key}/{i % 64}", b"x"), range(MISSED)))
        wait_until(lambda: refuses_writes(member), timeout=30, what="the member caught up")
        try:
            yield cluster, member, farm
        finally:
            farm.stop_all()


def refuses_writes(member: EtcdMember) -> bool:
    """Whether the member's own status shows the gap at which etcd refuses writes."""
    indexes = member.raft_indexes()
    return indexes is not None and indexes[0] - indexes[1] > REFUSING_GAP


def raw_put(cluster: EtcdCluster, member: EtcdMember, key: str, value: bytes) -> grpc.RpcError:
    """What ``member`` itself answers to a put, with no client logic in between."""
    tls = cluster.client_tls
    credentials = grpc.ssl_channel_credentials(
        tls.ca_file.read_bytes(), tls.key_file.read_bytes(), tls.cert_file.read_bytes()
    )
    with grpc.secure_channel(member.endpoint, credentials) as channel:
        stub = etcdrpc.KVStub(channel)
        try:
            stub.Put(etcdrpc.PutRequest(key=key.encode(), value=value), timeout=5)
        except grpc.RpcError as error:
            return error
    pytest.fail(f"{member.name} accepted the put of {key!r}")


def classified(error: grpc.RpcError) -> tuple[grpc.StatusCode, bool]:
    call: grpc.Call = error  # pyright: ignore[reportAssignmentType]
    return call.code(), member_cannot_serve(call.code(), call.details() or "")


def test_the_catching_up_member_s_refusal_is_retried_elsewhere_the_cluster_s_are_not(lagging):
    cluster, member, _ = lagging
    refusal = raw_put(cluster, member, cluster.prefix + "k", b"v")
    assert "etcdserver: too many requests" in (refusal.details() or "")
    assert classified(refusal) == (grpc.StatusCode.UNKNOWN, True)
    assert refuses_writes(member), "a refused write does not end the state"

    with EtcdClient(pinned(cluster, member)) as client:
        client.put(cluster.prefix + "k", b"v")
        assert client.requests["put"] == 2  # refused by the member, served by the next one
        assert client.endpoint != member.endpoint

    healthy = next(m for m in cluster.members if m is not member)
    outside = raw_put(cluster, healthy, "/another-application/k", b"v")
    too_large = raw_put(cluster, healthy, cluster.prefix + "big", b"x" * (1536 * 1024 + 1))
    over_grpc_limit = raw_put(cluster, healthy, cluster.prefix + "huge", b"x" * (3 << 20))
    assert classified(outside) == (grpc.StatusCode.PERMISSION_DENIED, False)
    assert classified(too_large) == (grpc.StatusCode.INVALID_ARGUMENT, False)
    assert classified(over_grpc_limit) == (grpc.StatusCode.RESOURCE_EXHAUSTED, False)
    unconfined = settings_for(cluster).model_copy(update={"prefix": "/"})
    with EtcdClient(unconfined) as client, pytest.raises(EtcdError, match="PERMISSION_DENIED"):
        client.put("/another-application/k", b"v")
    assert client.requests["put"] == 1  # the cluster's answer: no other member is asked


def test_workers_pinned_to_the_catching_up_member_run_every_operation(lagging):
    cluster, member, farm = lagging
    for unit in UNITS:
        farm.start(unit, etcd=pinned(cluster, member))
    with EtcdClient(avoiding(cluster, member)) as client:
        for unit in UNITS:
            done = finished(farm, client, unit, 2)
            assert [(e.id, e.outcome) for e in done] == [
                ("first", Outcome.DONE),
                ("second", Outcome.DONE),
            ]
    for unit in UNITS:
        assert not events(farm, unit, "etcd-failed")
        assert farm.processes[unit].poll() is None
