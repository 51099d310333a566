#!/usr/bin/env python3
"""Stands in for ``juju-exec`` in the benchmarks: records when the worker fired a hook.

Called as ``hook_recorder.py -u UNIT "JUJU_DISPATCH_PATH=hooks/NAME /charm/dispatch"``. It
appends one JSON line (CLOCK_MONOTONIC time, unit, command) to ``$ROLLINGOPS_BENCH_HOOK_LOG``
and exits at once: the benchmark plays the charm itself, so that hook time stays out of the
figures. Standard library only, so that its start-up is as short as Python allows.
"""

import json
import os
import sys
import time


def main() -> int:
    """Record the call; exit 0 so the worker counts the hook as fired."""
    called = time.monotonic()
    _, flag, unit, command = sys.argv
    if flag != "-u":
        return 2
    with open(os.environ["ROLLINGOPS_BENCH_HOOK_LOG"], "a") as out:
        out.write(json.dumps({"mono": called, "unit": unit, "command": command}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
