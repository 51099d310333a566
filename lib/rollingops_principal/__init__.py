"""The principal side of rollingops: protocol v1 models shared with the subordinate charm."""

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

__all__ = [
    "PROTOCOL_VERSION",
    "Finished",
    "Grant",
    "PrincipalBag",
    "Rejection",
    "Request",
    "Result",
    "SubordinateBag",
    "SubordinateState",
]
