"""The test bed is what it claims: real etcd, TLS, auth, and a client confined to one prefix.

Every other etcd test trusts these properties, so they are checked here against the raw
``pyetcd`` client, independently of the engine.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import grpc
import pyetcd
import pytest
from pyetcd.exceptions import ConnectionFailedError, ConnectionTimeoutError
from testbed import pki
from testbed.etcd import EtcdCluster, EtcdMember, EtcdStartError

from rollingops.certificates import common_name, generate_client_identity

T = TypeVar("T")
NO_PROXY = [("grpc.enable_http_proxy", 0)]


class NotYetError(Exception):
    """The awaited state has not been reached yet; ``eventually`` retries."""


@contextmanager
def connect(
    endpoint: str,
    ca_file: Path,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    timeout: float = 5.0,
) -> Iterator[pyetcd.Etcd3Client]:
    """A raw pyetcd client on one ``host:port`` endpoint, closed afterwards."""
    host, port = endpoint.rsplit(":", 1)
    client = pyetcd.client(
        host,
        int(port),
        ca_cert=str(ca_file),
        cert_key=None if key_file is None else str(key_file),
        cert_cert=None if cert_file is None else str(cert_file),
        timeout=timeout,
        grpc_options=NO_PROXY,
    )
    try:
        yield client
    finally:
        client.close()


def as_app(
    cluster: EtcdCluster, endpoint: str | None = None, timeout: float = 5.0
) -> AbstractContextManager[pyetcd.Etcd3Client]:
    """Connect as the application: its self-signed certificate, i.e. the CN user."""
    return connect(
        endpoint or cluster.endpoints[0],
        cluster.ca_file,
        cluster.client_cert_file,
        cluster.client_key_file,
        timeout,
    )


def as_root(
    cluster: EtcdCluster, endpoint: str | None = None
) -> AbstractContextManager[pyetcd.Etcd3Client]:
    """Connect as ``root`` with its CA-signed certificate."""
    return connect(
        endpoint or cluster.endpoints[0],
        cluster.ca_file,
        cluster.root_cert_file,
        cluster.root_key_file,
    )


def eventually(action: Callable[[], T], timeout: float = 10.0) -> T:
    """Retry ``action`` until it succeeds: an election after a kill takes up to a second or two."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except (NotYetError, ConnectionFailedError, ConnectionTimeoutError, grpc.RpcError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def assert_permission_denied(action: Callable[[], object]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        action()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- shape -------------------------------------------------------------------------------


def test_exposes_what_the_engine_needs(etcd: EtcdCluster) -> None:
    assert len(etcd.endpoints) == 1
    assert re.fullmatch(r"127\.0\.0\.1:\d+", etcd.endpoints[0])
    assert re.fullmatch(r"/rollingops/test-[0-9a-f]+/", etcd.prefix)
    assert common_name(etcd.client_cert_file.read_text()) == etcd.client_cn
    assert etcd.client_identity.cert_pem == etcd.client_cert_file.read_text()
    assert common_name(etcd.root_cert_file.read_text()) == "root"


def test_key_files_are_owner_only(etcd: EtcdCluster) -> None:
    keys = list((etcd.dir / "pki").glob("*-key.pem"))
    assert {etcd.client_key_file, etcd.root_key_file} <= set(keys)
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_provisioned_like_charmed_etcd(etcd: EtcdCluster) -> None:
    role = etcd.etcdctl("role", "get", etcd.role, check=True).stdout
    assert f"(prefix {etcd.prefix})" in role
    assert role.count("(prefix ") == 2  # read and write, on that one prefix only
    user = etcd.etcdctl("user", "get", etcd.client_cn, check=True).stdout
    assert etcd.role in user
    users = etcd.etcdctl("user", "list", check=True).stdout.split()
    assert sorted(users) == sorted(["root", etcd.client_cn])


# --- authorisation -----------------------------------------------------------------------


def test_app_client_reads_and_writes_under_its_prefix(etcd: EtcdCluster) -> None:
    key = etcd.prefix + "locks/a"
    with as_app(etcd) as client:
        client.put(key, "v1")
        value, _ = client.get(key)
        assert value == b"v1"
        assert [v for v, _ in client.get_prefix(etcd.prefix)] == [b"v1"]
        assert client.delete(key)


@pytest.mark.parametrize(
    "outside",
    [
        "/elsewhere",
        "/rollingops/other-app/key",
        "SIBLING",  # same text without the trailing slash: the grant is on the exact prefix
    ],
)
def test_app_client_is_denied_outside_its_prefix(etcd: EtcdCluster, outside: str) -> None:
    key = etcd.prefix.rstrip("/") + "-sibling/key" if outside == "SIBLING" else outside
    with as_root(etcd) as root:
        root.put(key, "planted")
    with as_app(etcd) as client:
        assert_permission_denied(lambda: client.put(key, "v"))
        assert_permission_denied(lambda: client.get(key))
        assert_permission_denied(lambda: client.get_prefix("/"))


def test_root_writes_anywhere(etcd: EtcdCluster) -> None:
    with as_root(etcd) as root:
        for key in ("/anywhere", etcd.prefix + "k", "/rollingops/other-app/k"):
            root.put(key, "r")
            assert root.get(key)[0] == b"r"
    with as_app(etcd) as client:
        assert client.get(etcd.prefix + "k")[0] == b"r"


# --- authentication ----------------------------------------------------------------------


def test_client_without_certificate_is_refused(etcd: EtcdCluster) -> None:
    with (
        connect(etcd.endpoints[0], etcd.ca_file) as anonymous,
        pytest.raises(ConnectionFailedError),
    ):
        anonymous.put(etcd.prefix + "x", "v")


@pytest.mark.parametrize("who", ["stranger", "same-cn-other-key", "root-from-other-ca"])
def test_untrusted_certificate_is_refused(etcd: EtcdCluster, tmp_path: Path, who: str) -> None:
    """Trust is in the certificate itself, not in its CN: a look-alike gets nowhere."""
    if who == "root-from-other-ca":
        pair = pki.CertificateAuthority.generate().issue_client_cert("root")
    else:
        identity = generate_client_identity(etcd.client_cn if who == "same-cn-other-key" else who)
        pair = pki.KeyPair(identity.key_pem, identity.cert_pem)
    cert_file, key_file = pki.write_pair(tmp_path, who, pair)
    with (
        connect(etcd.endpoints[0], etcd.ca_file, cert_file, key_file) as intruder,
        pytest.raises(ConnectionFailedError),
    ):
        intruder.get(etcd.prefix + "x")


def test_server_certificate_is_verified_against_the_test_ca(etcd: EtcdCluster) -> None:
    """The client side of TLS is real too: a client trusting another CA cannot connect."""
    other_ca = pki.write_public(
        etcd.dir / "other-ca.pem", pki.CertificateAuthority.generate().cert_pem
    )
    with (
        connect(etcd.endpoints[0], other_ca, etcd.client_cert_file, etcd.client_key_file) as c,
        pytest.raises(ConnectionFailedError),
    ):
        c.get(etcd.prefix + "x")


# --- lifecycle ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["member-stop", "cluster-teardown"])
def test_stop_ends_even_a_paused_member(etcd: EtcdCluster, how: str) -> None:
    member = etcd.members[0]
    pid = member.pid
    assert pid is not None
    member.pause()
    assert member.is_paused
    started = time.monotonic()
    if how == "member-stop":
        member.stop()  # graceful: SIGTERM is only acted on once the process is continued
    else:
        etcd.stop()
    assert time.monotonic() - started < 5
    assert not member.is_running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.usefixtures("need_etcd")
def test_bootstrap_survives_a_port_race(tmp_path: Path) -> None:
    """Another process binds a chosen port before etcd does; the bootstrap moves ports."""
    cluster = EtcdCluster(1, base_dir=tmp_path / "etcd")
    taken = cluster.members[0].client_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            cluster.start()
            assert cluster.members[0].client_port != taken
            with as_app(cluster) as client:
                client.put(cluster.prefix + "k", "v")
        finally:
            cluster.stop()
    assert "address already in use" in cluster.members[0].log_file.read_text()


@pytest.mark.usefixtures("need_etcd")
def test_failed_start_reports_the_log_and_leaves_nothing_running(tmp_path: Path) -> None:
    cluster = EtcdCluster(1, base_dir=tmp_path / "etcd")
    member = cluster.members[0]
    member.tls.key_file.unlink()  # etcd cannot load its key and exits at once
    started = time.monotonic()
    with pytest.raises(EtcdStartError, match=re.escape(str(member.log_file))):
        cluster.start()
    assert time.monotonic() - started < 10
    assert not member.is_running


# --- three members -----------------------------------------------------------------------


@pytest.mark.cluster
def test_every_member_serves_the_same_data(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.endpoints) == len(set(etcd_cluster.endpoints)) == 3
    for i, endpoint in enumerate(etcd_cluster.endpoints):
        with as_app(etcd_cluster, endpoint) as client:
            client.put(etcd_cluster.prefix + f"from-{i}", str(i))
    for endpoint in etcd_cluster.endpoints:
        with as_app(etcd_cluster, endpoint) as client:
            values = sorted(v for v, _ in client.get_prefix(etcd_cluster.prefix))
        assert values == [b"0", b"1", b"2"]


def put_via(cluster: EtcdCluster, member: EtcdMember, key: str, value: str) -> None:
    """One attempt on a fresh client: pyetcd shuns an endpoint for 300 s after one failure."""
    with as_app(cluster, member.endpoint, timeout=2.0) as client:
        client.put(key, value)


def local_value(cluster: EtcdCluster, member: EtcdMember, key: str) -> bytes:
    """A serializable read answers from the member's own store: proof it has the data."""
    with as_app(cluster, member.endpoint, timeout=2.0) as client:
        value, _ = client.get(key, serializable=True)
    if value is None:
        raise NotYetError(key)
    return value


@pytest.mark.cluster
def test_killed_leader_then_restart_rejoins(etcd_cluster: EtcdCluster) -> None:
    victim = etcd_cluster.leader()
    victim.kill()
    assert not victim.is_running
    survivors = [m for m in etcd_cluster.members if m is not victim]
    key = etcd_cluster.prefix + "written-while-down"
    eventually(lambda: put_via(etcd_cluster, survivors[0], key, "still-up"))
    with as_app(etcd_cluster, survivors[1].endpoint) as client:
        assert client.get(key)[0] == b"still-up"

    assert etcd_cluster.leader() in survivors

    victim.restart()
    assert victim.is_running
    assert eventually(lambda: local_value(etcd_cluster, victim, key)) == b"still-up"
    put_via(etcd_cluster, victim, etcd_cluster.prefix + "after-rejoin", "ok")
    after = etcd_cluster.prefix + "after-rejoin"
    assert eventually(lambda: local_value(etcd_cluster, survivors[0], after)) == b"ok"


@pytest.mark.cluster
def test_paused_member_is_silent_then_resumes(etcd_cluster: EtcdCluster) -> None:
    current_leader = etcd_cluster.leader()
    follower = next(m for m in etcd_cluster.members if m is not current_leader)
    follower.pause()
    assert follower.is_paused
    key = etcd_cluster.prefix + "during-pause"
    with (
        as_app(etcd_cluster, follower.endpoint, timeout=0.5) as frozen,
        pytest.raises(ConnectionTimeoutError),
    ):
        frozen.get(key)
    other = next(m for m in etcd_cluster.members if m is not follower)
    with as_app(etcd_cluster, other.endpoint) as client:
        client.put(key, "written")

    follower.resume()
    assert not follower.is_paused
    assert eventually(lambda: local_value(etcd_cluster, follower, key)) == b"written"
    put_via(etcd_cluster, follower, key, "after-resume")
    assert eventually(lambda: local_value(etcd_cluster, other, key)) == b"after-resume"
