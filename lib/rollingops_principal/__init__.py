"""The principal side of rollingops: ``RollingOps``, the protocol v1 models, the sync lock.

The public names load on first use, not with the package: the subordinate's long-lived worker
imports only the sync lock's wire (``rollingops_principal.sync_wire``), and importing the package
eagerly would load ``ops`` and every protocol model into it for nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

if TYPE_CHECKING:
    from .errors import (
        SyncLockError,
        SyncLockLostError,
        SyncLockNoRelationError,
        SyncLockTimeoutError,
        SyncLockUnavailableError,
    )
    from .protocol import (
        PROTOCOL_VERSION,
        Finished,
        Grant,
        PrincipalBag,
        Rejection,
        Request,
        Result,
        SubordinateBag,
        SubordinateState,
    )
    from .rollingops import (
        LockGrantedEvent,
        LockLostEvent,
        LockResult,
        RollingOps,
        RollingOpsError,
    )
    from .sync_wire import SyncGrant

_MODULE_OF = {
    "SyncLockError": "errors",
    "SyncLockLostError": "errors",
    "SyncLockNoRelationError": "errors",
    "SyncLockTimeoutError": "errors",
    "SyncLockUnavailableError": "errors",
    "PROTOCOL_VERSION": "protocol",
    "Finished": "protocol",
    "Grant": "protocol",
    "PrincipalBag": "protocol",
    "Rejection": "protocol",
    "Request": "protocol",
    "Result": "protocol",
    "SubordinateBag": "protocol",
    "SubordinateState": "protocol",
    "LockGrantedEvent": "rollingops",
    "LockLostEvent": "rollingops",
    "LockResult": "rollingops",
    "RollingOps": "rollingops",
    "RollingOpsError": "rollingops",
    "SyncGrant": "sync_wire",
}
"""Where each public name lives: its module is imported when the name is first asked for."""

__all__ = [
    "PROTOCOL_VERSION",
    "Finished",
    "Grant",
    "LockGrantedEvent",
    "LockLostEvent",
    "LockResult",
    "PrincipalBag",
    "Rejection",
    "Request",
    "Result",
    "RollingOps",
    "RollingOpsError",
    "SubordinateBag",
    "SubordinateState",
    "SyncGrant",
    "SyncLockError",
    "SyncLockLostError",
    "SyncLockNoRelationError",
    "SyncLockTimeoutError",
    "SyncLockUnavailableError",
    "__version__",
]


def __getattr__(name: str) -> object:
    """Load a public name from its module on first use (then it is a plain attribute)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
