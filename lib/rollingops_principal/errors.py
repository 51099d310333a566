"""What the principal library raises: one base class, and what a sync lock can run into."""

from __future__ import annotations


class RollingOpsError(Exception):
    """The library was asked for something it cannot do; the message says why."""


class SyncLockError(RollingOpsError):
    """A synchronous hold could not be had, or did not end as it should; the message says why."""


class SyncLockNoRelationError(SyncLockError):
    """No rollingops subordinate is related: there is nobody to ask."""


class SyncLockUnavailableError(SyncLockError):
    """The subordinate cannot grant synchronously now (peer backend, etcd not ready, no worker).

    Under the peer backend a grant needs a hook of the leader, and no hook can run on this
    machine while the calling hook holds the machine lock: waiting could only time out.
    """


class SyncLockTimeoutError(SyncLockError):
    """The lock was not granted within the timeout; nothing was left behind in etcd."""


class SyncLockLostError(SyncLockError):
    """The hold ended before it was released (lease lost, force-released, worker stopped).

    Raised on leaving the ``with`` block: the work done under it may have overlapped another
    holder, and the fencing token is what a protected resource can check.
    """
