#!/usr/bin/env python3
"""Entry point of the packed charm: charmcraft's dispatch runs ``src/charm.py``.

The ops code lives in ``charm/rollingops_charm``, packed into the charm's ``lib/`` (see
``charmcraft.yaml``); dispatch puts ``lib`` and ``src`` on ``PYTHONPATH``. This file only
silences known third-party import noise and hands over to it.
"""

import re
import warnings

# dpcharmlibs-interfaces' pydantic models warn at import (nothing of ours). A hook's stderr
# goes to the Juju log, where every hook would repeat them.
for _known in (
    "The 'default' attribute with value None",
    "The 'exclude' attribute with value True",
):
    warnings.filterwarnings("ignore", message=re.escape(_known), category=UserWarning)

from rollingops_charm.charm import main  # noqa: E402  # pyright: ignore[reportMissingTypeStubs]

if __name__ == "__main__":
    main()
