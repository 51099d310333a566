"""The worker imports only what it runs: not ``ops``, not the principal's protocol models.

It shares the sync lock's wire with the principal library; that must not pull in the rest of
the library (``ops`` and the protocol's models cost the long-lived worker about 14 MB).
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("ops", "rollingops_principal.protocol", "rollingops_principal.rollingops")


def modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    script = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_importing_the_worker_loads_neither_ops_nor_the_protocol_models():
    loaded = modules_after("import rollingops.worker")
    assert "rollingops_principal.sync_wire" in loaded
    assert loaded.isdisjoint(HEAVY)


def test_the_library_still_loads_them_once_one_of_its_names_is_used():
    loaded = modules_after("from rollingops_principal import RollingOps")
    assert set(HEAVY) <= loaded
