"""Run one demo-principal hook in a process of its own, for ``Cluster.start_on_the_side``.

Reads ``(root, machine, hook name, state)`` pickled on stdin, runs the hook with the same
ops.testing context the simulator uses, writes the output state pickled on stdout.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from cluster import _principal_class, principal_context


def main() -> int:
    root, machine, name, state = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - our parent's
    context = principal_context(_principal_class(), Path(root), machine)
    out = context.run(getattr(context.on, name)(), state)
    sys.stdout.buffer.write(pickle.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
