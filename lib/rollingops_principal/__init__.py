"""The principal side of rollingops: ``RollingOps`` and the protocol v1 models."""

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
]
