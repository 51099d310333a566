"""What a worker needs to know, written by the charm as one JSON file per unit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from .etcd_client import EtcdSettings

UnitName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*/[0-9]+$", max_length=128)]
SYNC_SOCKET_NAME = "sync.sock"
RESTART_PENDING_NAME = "restart-pending"
"""Written by the charm while a restart of the worker waits for what it serves."""
DEFAULT_BASE = Path("/var/lib/rollingops")
BASE_ENV = "ROLLINGOPS_STATE_DIR"
"""Overrides the base directory (tests and the simulator run without root paths)."""


def state_base() -> Path:
    """Where every unit's directory lives: ``<base>/<app>-<n>/``."""
    return Path(os.environ.get(BASE_ENV, DEFAULT_BASE))


def unit_dir(unit: str) -> Path:
    """One unit's own directory (0700): worker config, credentials, log, sync socket."""
    return state_base() / unit.replace("/", "-")


HookName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,63}$")]


class WorkerConfig(BaseModel):
    """Settings of one unit's worker; every path in it is specific to that unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: UnitName
    charm_dir: Path
    etcd: EtcdSettings
    lease_ttl: Annotated[int, Field(ge=2, le=3600)] = 30
    """Seconds after which a dead worker's lock is free again."""
    max_concurrent: Annotated[int, Field(ge=1, le=1000)] = 1
    state_dir: Path
    """Holds the unit's worker log; created 0700."""
    hook_runner: Path = Path("/usr/bin/juju-exec")
    lock_granted_hook: HookName = "rollingops-lock-granted"
    etcd_failed_hook: HookName = "rollingops-etcd-failed"
    queue_changed_hook: HookName = "rollingops-queue-changed"
    """Fired when the running operation ends other than by the principal's result.

    The worker's verdicts (``lock-lost``, ``hook-failed``) and an end written by someone else
    (the operator's ``cancel`` or ``force-release``) run no hook of their own in the unit; this
    one tells the charm to read its queue again, so that it stops saying it holds the lock.
    """
    failure_deadline: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Seconds etcd may stay unreachable before the worker fires the failure hook and exits."""
    hook_timeout: Annotated[float, Field(gt=0, le=3600)] = 600.0
    hook_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    """Times the lock-granted hook is fired before its operation is given up (``hook-failed``).

    The attempts are due 1 s apart, then twice as long each time, at most 30 s, counted between
    their starts (with the default: 0, 1, 3, 7 and 15 s after the first one started); one that
    falls due while the attempt before it still runs starts when that one ends. So the
    operation ends ``hook-failed`` 15 s plus the last hook's own run time after its first
    attempt, when each failing hook ends before the next attempt is due (a slower one delays
    the next by the excess): a unit whose agent cannot run hooks must not keep the whole domain
    waiting, the lock goes to the next unit.
    """

    @classmethod
    def load(cls, path: Path) -> WorkerConfig:
        """Read and validate a config file."""
        return cls.model_validate_json(path.read_bytes())

    @property
    def sync_socket(self) -> Path:
        """Where the worker serves synchronous holds (``sync_server``), root only."""
        return self.state_dir / SYNC_SOCKET_NAME

    @property
    def restart_pending(self) -> Path:
        """Present while the charm waits to restart this worker (it fires a hook when it can)."""
        return self.state_dir / RESTART_PENDING_NAME

    @property
    def log_file(self) -> Path:
        """The unit's structured (JSON lines) worker log."""
        return self.state_dir / "worker.log"
