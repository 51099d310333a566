#!/usr/bin/env python3
"""Stands in for ``juju-exec`` and for the charm behind it, for worker tests.

Called as ``fake_juju_exec.py -u UNIT "JUJU_DISPATCH_PATH=hooks/NAME /charm/dispatch"``. It
records the call to ``$FAKE_JUJU_RECORD`` (one JSON line), and on the lock-granted hook plays the
charm and principal: reads the running operation from etcd, holds for ``kwargs["hold"]``
seconds, and reports ``kwargs["results"][attempt - 1]`` (default ``release``), or nothing when
that entry is null; ``kwargs["hook_fails"]`` makes that hook fail instead, like an unreachable
unit agent. On the queue-changed hook it records what the charm would then read: the running
operation and the last one ended.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rollingops.etcd_client import EtcdClient
from rollingops.models import OperationResult
from rollingops.store import OperationStore
from rollingops.worker_config import WorkerConfig


def record(**fields: object) -> None:
    with Path(os.environ["FAKE_JUJU_RECORD"]).open("a") as out:
        fcntl.flock(out, fcntl.LOCK_EX)
        out.write(json.dumps({"ts": time.time(), **fields}) + "\n")


@contextmanager
def unit_store(unit: str) -> Iterator[OperationStore]:
    config = WorkerConfig.load(
        Path(os.environ["FAKE_JUJU_CONFIGS"]) / f"{unit.replace('/', '-')}.json"
    )
    with EtcdClient(config.etcd) as client:
        yield OperationStore(client, config.etcd.prefix, unit)


def read_queue(unit: str) -> None:
    with unit_store(unit) as store:
        queue = store.load().queue
    last = queue.history[-1] if queue.history else None
    record(
        unit=unit,
        event="queue-read",
        current=queue.current.operation.id if queue.current else None,
        last=[last.id, last.outcome.value] if last else None,
    )


def play_charm(unit: str) -> int:
    with unit_store(unit) as store:
        grant = store.load().queue.current
        assert grant is not None
        op = grant.operation
        if op.kwargs.get("hook_fails"):
            print("cannot reach the unit agent", file=sys.stderr)
            return 1
        record(
            unit=unit,
            event="start",
            op=op.id,
            token=grant.token,
            attempt=op.attempt,
            rerun=grant.rerun,
            kwargs=op.kwargs,
        )
        time.sleep(float(op.kwargs.get("hold", 0)))  # type: ignore[arg-type]
        results = op.kwargs.get("results") or ["release"]
        result = results[min(op.attempt, len(results)) - 1]  # type: ignore[index]
        record(unit=unit, event="end", op=op.id, token=grant.token, attempt=op.attempt)
        if result is not None:
            store.update(lambda q: q.report(op.id, OperationResult(result)))
    return 0


def main() -> int:
    _, flag, unit, command = sys.argv
    assert flag == "-u"
    match = re.fullmatch(r"JUJU_DISPATCH_PATH=hooks/([a-z-]+) (\S+)", command)
    assert match, command
    hook = match.group(1)
    record(unit=unit, event="hook", hook=hook, context="JUJU_CONTEXT_ID" in os.environ)
    if hook == "rollingops-lock-granted":
        return play_charm(unit)
    if hook == "rollingops-queue-changed":
        read_queue(unit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
