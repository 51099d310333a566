"""``juju-exec`` for the cluster simulator: hand the hook to the simulator and wait for it.

Called by a real worker as ``juju_exec.py -u UNIT "JUJU_DISPATCH_PATH=hooks/NAME DISPATCH"``,
exactly like Juju's juju-exec. It connects to the simulator's Unix socket
(``$ROLLINGOPS_SIM_SOCKET``), asks for the hook and returns once the hook has run, so the worker
sees the same blocking behaviour as with Juju.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys


def main() -> int:
    _, flag, unit, command = sys.argv
    match = re.fullmatch(r"JUJU_DISPATCH_PATH=hooks/([a-z0-9-]+) \S+", command)
    if flag != "-u" or match is None:
        print(f"juju-exec (simulated): unexpected command {command!r}", file=sys.stderr)
        return 2
    request = {"unit": unit, "hook": match.group(1)}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(os.environ["ROLLINGOPS_SIM_SOCKET"])
        conn.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(conn.makefile().readline() or "{}")
    if not reply.get("ok"):
        print(f"juju-exec (simulated): {reply.get('error', 'no answer')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
