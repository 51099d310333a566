"""The principal side of rollingops: ``RollingOps``, the protocol v1 models, the sync lock."""

__version__ = "0.2.0"

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
from .rollingops import LockGrantedEvent, LockLostEvent, LockResult, RollingOps, RollingOpsError
from .sync_wire import SyncGrant

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
