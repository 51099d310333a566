"""A unit's etcd client credentials: which certificate it connects with, on its own disk.

Two ways to be trusted by charmed-etcd:

- **own leaf** (``CredentialMode.UNIT``): once the leader's client CA is trusted through
  ``client-cas``, the unit connects with a 7-day leaf for a key generated on this machine, which
  never leaves it. The unit renews the leaf itself; charmed-etcd is not involved.
- **enrolment** (``CredentialMode.ENROLMENT``): before that (or without ``client-cas``), the
  unit connects with the enrolment pair charmed-etcd pinned. Its renewal changes the pinned
  leaf, and charmed-etcd restarts etcd to trust the new one.

A unit moves to its own leaf only after a probe with it succeeded against etcd, so the move never
costs an outage: until charmed-etcd restarted etcd with our CA, the probe fails and the
enrolment pair stays in use.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from pathlib import Path

from rollingops.certificates import (
    UNIT_LEAF_LIFETIME,
    UNIT_LEAF_RENEWAL_MARGIN,
    common_name,
    fingerprint,
    generate_key,
    is_signed_by,
    issue_client_certificate,
    matches_key,
    needs_renewal,
)
from rollingops.files import write_private

from .identity import AppIdentity
from .paths import UnitPaths

URGENT_MARGIN = dt.timedelta(hours=12)
"""A leaf this close to expiry is renewed even while the unit holds the lock."""


class CredentialMode(str, enum.Enum):
    """Which certificate this unit connects with."""

    UNIT = "own leaf"
    ENROLMENT = "enrolment"


@dataclass(frozen=True)
class ClientFiles:
    """Key and certificate files to hand to the etcd client."""

    key_file: Path
    cert_file: Path
    mode: CredentialMode


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _leaf_is_current(cert_pem: str, key_pem: str, ca_cert: str, cn: str) -> bool:
    return (
        bool(cert_pem)
        and matches_key(cert_pem, key_pem)
        and is_signed_by(cert_pem, ca_cert)
        and common_name(cert_pem) == cn
    )


def ensure_unit_leaf(
    paths: UnitPaths, identity: AppIdentity, cn: str, *, busy: bool, now: dt.datetime | None = None
) -> bool:
    """Keep this unit's own key and a current leaf for it on disk; True if the leaf changed.

    ``busy`` (an operation is running here) postpones a routine renewal: a new certificate
    means a worker restart, which would release the lock mid-operation. Within 12 hours of
    expiry the leaf is renewed anyway.
    """
    key_pem = _read(paths.unit_key)
    if not key_pem:
        key_pem = generate_key()
        write_private(paths.unit_key, key_pem)
    cert_pem = _read(paths.unit_cert)
    current = _leaf_is_current(cert_pem, key_pem, identity.ca.cert_pem, cn)
    margin = URGENT_MARGIN if busy else UNIT_LEAF_RENEWAL_MARGIN
    if current and not needs_renewal(cert_pem, margin, now):
        return False
    leaf = issue_client_certificate(identity.ca, cn, key_pem, UNIT_LEAF_LIFETIME, now)
    return write_private(paths.unit_cert, leaf)


def write_enrolment(paths: UnitPaths, identity: AppIdentity) -> bool:
    """Put the enrolment pair on disk (enrolment mode); True if it changed."""
    written = [
        write_private(paths.client_key, identity.enrolment.key_pem),
        write_private(paths.client_cert, identity.enrolment.cert_pem),
    ]
    return any(written)


def forget_enrolment(paths: UnitPaths) -> None:
    """Remove the shared enrolment key once this unit no longer needs it."""
    paths.client_key.unlink(missing_ok=True)
    paths.client_cert.unlink(missing_ok=True)


def unit_files(paths: UnitPaths) -> ClientFiles:
    """The unit's own pair."""
    return ClientFiles(paths.unit_key, paths.unit_cert, CredentialMode.UNIT)


def enrolment_files(paths: UnitPaths) -> ClientFiles:
    """The shared enrolment pair."""
    return ClientFiles(paths.client_key, paths.client_cert, CredentialMode.ENROLMENT)


def ca_id(identity: AppIdentity) -> str:
    """What a successful probe is recorded against: a new CA needs a new probe."""
    return fingerprint(identity.ca.cert_pem)
