"""Every file of a unit lives in its own directory: several units may share a machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rollingops.worker_config import RESTART_PENDING_NAME, SYNC_SOCKET_NAME, unit_dir


@dataclass(frozen=True)
class UnitPaths:
    """One unit's worker config, credentials and log, all under ``root`` (0700)."""

    root: Path
    worker_config: Path
    client_cert: Path
    """The pair this unit connects with now (see ``credentials``)."""
    client_key: Path
    unit_cert: Path
    """This unit's own leaf, signed by the application's client CA."""
    unit_key: Path
    """This unit's own key: generated here, never sent anywhere."""
    probe_cert: Path
    probe_key: Path
    """A candidate pair while it is being tried against etcd."""
    etcd_ca: Path
    worker_log: Path
    sync_socket: Path
    """Where the worker serves synchronous holds (published to the principal)."""
    lock_command: Path
    """``rollingops-lock`` bound to this unit's socket, for scripts on the machine (0700)."""
    restart_pending: Path
    """Present while a worker restart waits (``worker_lifecycle``): the worker's cue."""

    @classmethod
    def for_unit(cls, unit: str) -> UnitPaths:
        """``<base>/<app>-<n>/...``."""
        root = unit_dir(unit)
        return cls(
            root=root,
            worker_config=root / "worker.json",
            client_cert=root / "client.pem",
            client_key=root / "client.key",
            unit_cert=root / "unit.pem",
            unit_key=root / "unit.key",
            probe_cert=root / "probe.pem",
            probe_key=root / "probe.key",
            etcd_ca=root / "etcd-ca.pem",
            worker_log=root / "worker.log",
            sync_socket=root / SYNC_SOCKET_NAME,
            lock_command=root / "rollingops-lock",
            restart_pending=root / RESTART_PENDING_NAME,
        )
