"""When this unit's worker is started, restarted and stopped: the rules, in one place.

The worker holds the lock for this unit: the running operation's slot and every synchronous
hold it serves (a principal's ``sync_lock()``, a script's ``rollingops-lock``). Stopping it ends
them all, so the charm decides its lifecycle by these rules, and ``charm.py`` only says which
event happened.

1. **It runs exactly while it can grant**: the leader decided etcd and this unit has etcd
   settings (an answer from charmed-etcd and a credential). Otherwise it is stopped: under peer
   or none the queue is granted elsewhere, and without settings it could only fail.
2. **It is restarted when what it read at start changed**: its config file, the credential
   files (a renewal, a CA rotation by charmed-etcd) or the charm's code (``upgrade-charm``
   forgets the digest). The digest of those files says which worker runs.
3. **A restart the charm decides waits while the worker serves something**: an operation
   running here, or a synchronous hold (``sync_holds``, published by the worker). The old
   worker keeps its connections meanwhile; the unit's status says what the restart waits for.
   The wait is bounded (``RESTART_WAIT_BOUND``): a renewed credential must be taken up before
   the old one expires, and new code cannot wait for ever behind a hung holder. Past the
   bound the restart goes ahead and the worker ends what it serves as on any stop: a hold's
   command is told (and ended) and the principal's hold is lost *before* its key is deleted,
   so nothing else can be granted while the holder still runs.
4. **The restart happens as soon as it can**: the worker fires the queue-changed hook when
   the last hold ends while ``restart-pending`` exists (and the operation's end already runs a
   hook), so the wait does not last until the next ``update-status``.
5. **Stops the charm cannot postpone** go ahead at once, the holders told first as in 3:
   the unit going away (``stop``/``remove``), the etcd relation gone (charmed-etcd removes our
   user: the worker can no longer keep its leases), the leader moving the application off etcd.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from rollingops.files import write_private
from rollingops.lock_command import launcher
from rollingops.models import utcnow
from rollingops.supervisor import WorkerCommand, supervisor_for
from rollingops.sync_holds import SyncHold, live_holds
from rollingops.worker_config import WorkerConfig

from .paths import UnitPaths

RESTART_WAIT_BOUND = dt.timedelta(hours=1)
"""How long a decided restart waits for what the worker serves before it goes ahead."""


class Step(Enum):
    """What the charm does with the worker in this hook."""

    START = "start"
    KEEP = "keep"
    RESTART = "restart"
    WAIT = "wait"
    STOP = "stop"


@dataclass(frozen=True)
class Busy:
    """What a restart would end now."""

    operation: str | None = None
    """The id of the operation this unit runs, if any."""
    holds: tuple[SyncHold, ...] = ()

    def __bool__(self) -> bool:
        return self.operation is not None or bool(self.holds)

    def describe(self) -> str:
        """What a restart waits for, in an operator's words."""
        parts = [f"operation {self.operation}"] if self.operation else []
        parts += [f"sync hold by {hold.holder} (token {hold.token})" for hold in self.holds]
        return ", ".join(parts)


@dataclass(frozen=True)
class Situation:
    """What the rules look at."""

    wanted: bool
    """Whether the worker should run at all (rule 1)."""
    running: bool
    digest: str
    """The digest of what a worker would read if it started now."""
    running_digest: str
    """The digest of what the running worker read ("" when unknown: restart it)."""
    busy: Busy
    waiting_since: dt.datetime | None
    """Since when a restart has been waiting, if one is."""

    @property
    def changed(self) -> bool:
        """Whether what the worker read at start changed since (rule 2)."""
        return self.digest != self.running_digest


def next_step(situation: Situation, now: dt.datetime) -> Step:
    """Rules 1-3 as a pure function of the situation."""
    if not situation.wanted:
        return Step.STOP
    if not situation.running:
        return Step.START
    if not situation.changed:
        return Step.KEEP
    if not situation.busy:
        return Step.RESTART
    since = situation.waiting_since or now
    return Step.RESTART if now - since >= RESTART_WAIT_BOUND else Step.WAIT


def digest_of(files: Iterable[Path]) -> str:
    """The digest of what a worker reads at start (a missing file counts as empty)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class Outcome:
    """What this hook did with the worker, for the charm to remember until the next hook."""

    running_digest: str
    """The digest of the worker that runs now ("" when none runs)."""
    waiting_since: dt.datetime | None
    waiting_for: str
    """What a waiting restart waits for ("" when none waits)."""


NOTHING_RUNS = Outcome(running_digest="", waiting_since=None, waiting_for="")


class WorkerLifecycle:
    """Applies the rules to one unit's worker through its supervisor."""

    def __init__(self, command: WorkerCommand, paths: UnitPaths) -> None:
        self._command = command
        self._paths = paths
        self._supervisor = supervisor_for(command, paths.root)

    def drive(self, config: WorkerConfig | None, operation: str | None, last: Outcome) -> Outcome:
        """One hook's step: ``config`` is what the worker should run with (``None``: not at all).

        ``operation`` is the id of the operation this unit runs; ``last`` what the previous
        hook remembered.
        """
        digest = self._prepare(config) if config is not None else ""
        situation = Situation(
            wanted=config is not None,
            running=self.running(),
            digest=digest,
            running_digest=last.running_digest,
            busy=Busy(operation=operation, holds=live_holds(self._paths.root)),
            waiting_since=last.waiting_since,
        )
        return self.apply(situation)

    def _prepare(self, config: WorkerConfig) -> str:
        """Write what a worker reads at start and ``rollingops-lock``; the digest of it all."""
        paths = self._paths
        write_private(paths.worker_config, config.model_dump_json(indent=2))
        command = self._command
        socket = config.sync_socket
        source = launcher(command.python, command.python_path, socket)
        write_private(paths.lock_command, source, mode=0o700)
        etcd = config.etcd
        return digest_of((paths.worker_config, etcd.ca_file, etcd.cert_file, etcd.key_file))

    def apply(self, situation: Situation, now: dt.datetime | None = None) -> Outcome:
        """Take the step the rules give; what to remember of it."""
        now = now or utcnow()
        step = next_step(situation, now)
        if step is Step.WAIT:
            self._paths.restart_pending.touch(mode=0o600)
            return Outcome(
                running_digest=situation.running_digest,
                waiting_since=situation.waiting_since or now,
                waiting_for=situation.busy.describe(),
            )
        self._paths.restart_pending.unlink(missing_ok=True)
        if step is Step.STOP:
            self.stop()
            return NOTHING_RUNS
        self._supervisor.ensure_running(restart=situation.changed)
        return Outcome(running_digest=situation.digest, waiting_since=None, waiting_for="")

    def stop(self) -> None:
        """Stop the worker now (rule 5); it tells its holders before it releases anything."""
        self._supervisor.remove()
        self._paths.restart_pending.unlink(missing_ok=True)

    def running(self) -> bool:
        """Whether the unit's worker process is alive."""
        return self._supervisor.is_running()
