"""Run one principal hook in a process of its own, for ``Cluster.start_on_the_side``.

Reads ``(principal charm, root, unit, hook name, state)`` pickled on stdin (from our
parent), runs the hook with the same ops.testing context the simulator uses, and writes the
output state pickled on stdout.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from rollingops_sim.cluster import principal_context


def main() -> int:
    principal, root, unit, name, state = pickle.loads(sys.stdin.buffer.read())  # noqa: S301
    context = principal_context(principal, principal.charm_class(), Path(root), unit)
    out = context.run(getattr(context.on, name)(), state)
    sys.stdout.buffer.write(pickle.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
