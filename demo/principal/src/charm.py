#!/usr/bin/env python3
"""A demo principal for rollingops: restarts under the lock and records what happened.

Every grant is written to ``$ROLLINGOPS_DEMO_RECORD`` (default
``/var/lib/rollingops-demo/record.jsonl``) as JSON lines: ``start`` and ``end`` with the unit,
op, callback, attempt and fencing token. ``kwargs`` steer it: ``seconds`` (how long a restart
takes), ``results`` (result per attempt, default ``release``; ``null`` never answers),
``fail-times`` (for ``flaky``: raise on the first attempts, which the library reports as
``retry-release``). A grant taken away while it ran (lock lost, or the operator's
force-release) is recorded as ``lost``. Its ``stop`` hook leaves "the cluster" under the sync
lock for ``leave-seconds`` (config), recorded as ``leave-start``/``leave-end`` with the token,
or ``leave-failed`` with the reason when the subordinate cannot grant synchronously.

The ``record`` action returns this unit's lines, so that tests on a real controller can read
them without a shell on the machine. The unit is active once related to the subordinate; its
message is what the subordinate last said it does for us.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import ops
from rollingops_principal import LockGrantedEvent, LockLostEvent, RollingOps, SyncLockError

RECORD_ENV = "ROLLINGOPS_DEMO_RECORD"
RELATION = "rollingops"


def _record_path() -> Path:
    return Path(os.environ.get(RECORD_ENV, "/var/lib/rollingops-demo/record.jsonl"))


class DemoPrincipal(ops.CharmBase):
    """Requests restarts; ``restart`` and ``reload`` via the event, ``flaky`` via a callback."""

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self._attempts = 0
        self.rolling = RollingOps(
            self, RELATION, callbacks={"flaky": self._flaky}, events=("restart", "reload")
        )
        framework.observe(self.rolling.on.lock_granted, self._on_lock_granted)
        framework.observe(self.rolling.on.lock_lost, self._on_lock_lost)
        framework.observe(self.on.restart_action, self._on_restart_action)
        framework.observe(self.on.record_action, self._on_record_action)
        framework.observe(self.on.collect_unit_status, self._on_collect_unit_status)
        framework.observe(self.on.stop, self._on_stop)

    def _on_stop(self, _: ops.StopEvent) -> None:
        """Leave the service's cluster under the lock, as a scale-down must.

        Recorded as ``leave-start`` / ``leave-end`` with the sync grant's token; a sync lock the
        subordinate cannot give (peer backend, no etcd) is recorded as ``leave-failed`` and the
        unit leaves anyway: a stop hook cannot wait, and this demo has nothing to protect.
        """
        seconds = float(self.config.get("leave-seconds", 0))
        try:
            with self.rolling.sync_lock(timeout=120, holder=f"{self.unit.name} leaving") as grant:
                self._record("leave-start", "leave", "stop", 1, grant.token)
                time.sleep(seconds)
                self._record("leave-end", "leave", "stop", 1, grant.token)
        except SyncLockError as error:
            self._record("leave-failed", "leave", "stop", 0, 0, reason=str(error))

    def _on_restart_action(self, event: ops.ActionEvent) -> None:
        max_retry = int(event.params.get("max-retry", -1))
        op_id = self.rolling.request(
            str(event.params.get("callback", "restart")),
            json.loads(str(event.params.get("kwargs", "{}"))),
            max_retry=None if max_retry < 0 else max_retry,
        )
        event.set_results({"op": op_id})

    def _on_record_action(self, event: ops.ActionEvent) -> None:
        """The unit's record as one JSON list (action results hold strings only)."""
        path = _record_path()
        lines = path.read_text().splitlines() if path.exists() else []
        mine = [entry for entry in map(json.loads, lines) if entry.get("unit") == self.unit.name]
        event.set_results({"count": len(mine), "record": json.dumps(mine)})

    def _on_collect_unit_status(self, event: ops.CollectStatusEvent) -> None:
        """Blocked until related; then active, whatever the lock does, so that tests can wait."""
        if self.model.get_relation(RELATION) is None:
            event.add_status(ops.BlockedStatus("integrate with the rollingops subordinate"))
            return
        try:
            state = self.rolling.state
        except ValueError:  # pydantic's ValidationError too: the subordinate's data is unusable
            state = None
        message = "waiting for the subordinate" if state is None else f"lock: {state.status}"
        event.add_status(ops.ActiveStatus(message))

    def _on_lock_granted(self, event: LockGrantedEvent) -> None:
        self._record("start", event.op_id, event.callback, event.attempt, event.token)
        time.sleep(float(event.kwargs.get("seconds", 0)))
        results = event.kwargs.get("results") or ["release"]
        result = results[min(event.attempt, len(results)) - 1]
        self._record("end", event.op_id, event.callback, event.attempt, event.token, result=result)
        if result is not None:  # null: a principal that never answers (stuck)
            self.rolling.finish(event.op_id, result)

    def _on_lock_lost(self, event: LockLostEvent) -> None:
        """Recorded as ``lost``: the operation may have overlapped another unit's."""
        self._record("lost", event.op_id, event.callback, 0, 0, reason=event.reason)

    def _flaky(self, **kwargs: Any) -> None:
        grant = self.rolling.granted
        if grant is None:  # called by the library only while granted
            return
        self._record("start", grant.id, grant.callback, grant.attempt, grant.token)
        if grant.attempt <= int(kwargs.get("fail-times", 1)):
            self._record("fail", grant.id, grant.callback, grant.attempt, grant.token)
            raise RuntimeError(f"flaky failure on attempt {grant.attempt}")
        self._record("end", grant.id, grant.callback, grant.attempt, grant.token, result="release")

    def _record(
        self, event: str, op_id: str, callback: str, attempt: int, token: int, **extra: str
    ) -> None:
        path = _record_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        line = {
            "ts": time.time(),
            "unit": self.unit.name,
            "event": event,
            "op": op_id,
            "callback": callback,
            "attempt": attempt,
            "token": token,
            **extra,
        }
        with path.open("a") as out:
            fcntl.flock(out, fcntl.LOCK_EX)
            out.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    ops.main(DemoPrincipal)
