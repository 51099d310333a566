"""The principal side of rollingops: ``RollingOps``, the protocol v1 models, the sync lock."""

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
from .rollingops import LockGrantedEvent, LockLostEvent, RollingOps, RollingOpsError
from .sync_wire import SyncGrant

__all__ = [
    "PROTOCOL_VERSION",
    "Finished",
    "Grant",
    "LockGrantedEvent",
    "LockLostEvent",
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
]
