"""The cluster simulator: real charms hook by hook, real workers, real etcd; Juju simulated.

Importing it silences two warnings that pydantic raises at import time about models of
dpcharmlibs-interfaces (the etcd_client relation library): they are not ours to fix, and they
would be printed into the simulator's output.
"""

import warnings

for _attribute in ("default", "exclude"):
    warnings.filterwarnings(
        "ignore", message=f"The '{_attribute}' attribute with value", category=UserWarning
    )
