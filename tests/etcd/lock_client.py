"""A contender in its own process: acquire, hold, release, and say so on stdout as JSON lines.

Run by the tests so that mutual exclusion is checked across real processes, and so that a
holder can be SIGKILLed, SIGSTOPped and SIGTERMed like a real worker.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from rollingops.etcd_client import EtcdClient, EtcdSettings
from rollingops.lease import Lease
from rollingops.semaphore import FairSemaphore


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "ts": time.time(), **fields}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--waiters", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--capacity", type=int, default=1)
    parser.add_argument("--ttl", type=int, default=5)
    parser.add_argument("--hold", type=float, default=0.0, help="seconds; <0 holds until told")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = EtcdClient(EtcdSettings.model_validate_json(args.settings.read_text()))
    lease = Lease(client, args.ttl)
    semaphore = FairSemaphore(client, args.waiters, args.capacity, lease, args.owner)
    say("waiting", owner=args.owner, key=semaphore.key)
    token = semaphore.acquire(cancel=stop)
    say("acquired", owner=args.owner, token=token)
    deadline = time.monotonic() + args.hold
    while not stop.is_set() and (args.hold < 0 or time.monotonic() < deadline):
        if not semaphore.is_held():
            say("lost", owner=args.owner, token=token)
            return 2
        stop.wait(0.05)
    say("releasing", owner=args.owner, token=token)
    semaphore.release()
    lease.revoke()
    say("released", owner=args.owner, token=token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
