#!/usr/bin/env python3
"""Entry point of the packed charm: charmcraft's dispatch runs ``src/charm.py``.

The ops code lives in ``charm/rollingops_charm`` (installed into the charm's venv with the
engine and the protocol library); this file only hands over to it.
"""

from rollingops_charm.charm import main  # pyright: ignore[reportMissingTypeStubs]

if __name__ == "__main__":
    main()
