"""A unit's etcd client credentials: the pair it connects with, and when it may change it.

The rule: **a unit never moves from credentials that work to credentials etcd has not accepted
yet.** It connects with its *active* pair (``client.key``/``client.pem``, and the prefix that
pair's user may reach). Better pairs are *candidates*, in order of preference:

1. its **own leaf** (``unit.key``/``unit.pem``): a 7-day leaf for a key generated on this
   machine, signed by the application's client CA; usable once charmed-etcd trusts that CA
   through ``client-cas``. The unit renews it itself; charmed-etcd is not involved.
2. the **enrolment** pair from the leader's secret, which charmed-etcd pins.

A candidate replaces the active pair only after a probe with it succeeded against etcd
(at most 1 s, in hooks that may probe). With no working pair yet, the enrolment pair is taken
at once: there is nothing to lose. So a renewed enrolment leaf, a new client CA, a new
cluster-id or an upgrade from an older identity never cuts a unit off while charmed-etcd catches
up: the old pair keeps serving until the new one is proven.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rollingops.certificates import (
    UNIT_LEAF_LIFETIME,
    UNIT_LEAF_RENEWAL_MARGIN,
    ClientIdentity,
    common_name,
    generate_key,
    is_signed_by,
    is_usable_key,
    issue_client_certificate,
    matches_key,
    needs_renewal,
)
from rollingops.files import read_private, write_private

from .identity import AppIdentity
from .paths import UnitPaths

logger = logging.getLogger(__name__)

OWN_LEAF = "own leaf"
ENROLMENT = "enrolment"


@dataclass(frozen=True)
class Credential:
    """A key, its certificate, and the prefix the certificate's user may reach."""

    key_pem: str
    cert_pem: str
    prefix: str
    kind: str

    @property
    def user(self) -> str:
        """The etcd user: the certificate's CN."""
        return common_name(self.cert_pem)

    def __repr__(self) -> str:
        return f"Credential({self.kind}, user={self.user!r}, prefix={self.prefix!r})"


def _usable_pair(key_pem: str, cert_pem: str) -> bool:
    """Whether both parse, belong together and the certificate has not expired."""
    try:
        return matches_key(cert_pem, key_pem) and not needs_renewal(cert_pem, dt.timedelta(0))
    except ValueError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def own_leaf(
    paths: UnitPaths, identity: AppIdentity, cn: str, prefix: str, now: dt.datetime | None = None
) -> Credential:
    """The unit's own key and a current leaf for it (made or renewed here, 0600)."""
    key_pem = read_private(paths.unit_key)
    if not is_usable_key(key_pem):
        if key_pem or paths.unit_key.exists():
            logger.warning("%s is not a usable EC key: generating a new one", paths.unit_key)
        _remove(paths.unit_key)
        key_pem = generate_key()
        write_private(paths.unit_key, key_pem)
    cert_pem = read_private(paths.unit_cert)
    if not _leaf_is_current(cert_pem, key_pem, identity.ca.cert_pem, cn, now):
        cert_pem = issue_client_certificate(identity.ca, cn, key_pem, UNIT_LEAF_LIFETIME, now)
        write_private(paths.unit_cert, cert_pem)
    return Credential(key_pem, cert_pem, prefix, OWN_LEAF)


def _leaf_is_current(
    cert_pem: str, key_pem: str, ca_cert: str, cn: str, now: dt.datetime | None
) -> bool:
    try:
        return (
            bool(cert_pem)
            and matches_key(cert_pem, key_pem)
            and is_signed_by(cert_pem, ca_cert)
            and common_name(cert_pem) == cn
            and not needs_renewal(cert_pem, UNIT_LEAF_RENEWAL_MARGIN, now)
        )
    except ValueError:
        return False


def enrolment(identity: AppIdentity, prefix: str) -> Credential:
    """The application's enrolment pair, for ``prefix``."""
    pair: ClientIdentity = identity.enrolment
    return Credential(pair.key_pem, pair.cert_pem, prefix, ENROLMENT)


def read_active(paths: UnitPaths, prefix: str, own_cert: str) -> Credential | None:
    """The pair this unit connects with now, if it has a usable one."""
    key_pem, cert_pem = read_private(paths.client_key), read_private(paths.client_cert)
    if not _usable_pair(key_pem, cert_pem):
        return None
    kind = OWN_LEAF if own_cert and cert_pem == own_cert else ENROLMENT
    return Credential(key_pem, cert_pem, prefix, kind)


def activate(paths: UnitPaths, credential: Credential) -> None:
    """Make ``credential`` the pair this unit connects with."""
    write_private(paths.client_key, credential.key_pem)
    write_private(paths.client_cert, credential.cert_pem)


def write_probe(paths: UnitPaths, credential: Credential) -> tuple[Path, Path]:
    """Files holding a candidate for one probe; ``forget_probe`` removes them."""
    write_private(paths.probe_key, credential.key_pem)
    write_private(paths.probe_cert, credential.cert_pem)
    return paths.probe_key, paths.probe_cert


def forget_probe(paths: UnitPaths) -> None:
    """Remove the probe files."""
    for path in (paths.probe_key, paths.probe_cert):
        _remove(path)


def choose_credential(
    active: Credential | None,
    candidates: list[Credential],
    accepted: Callable[[Credential], bool] | None,
) -> Credential | None:
    """The pair to connect with: the first candidate etcd accepts, else the active one.

    ``accepted`` probes etcd; ``None`` where this hook may not probe (then nothing changes but
    a first adoption). Candidates after the active one are never tried: they are not better.
    """
    if active is None:
        return next((c for c in candidates if c.kind == ENROLMENT), None)
    for candidate in candidates:
        if candidate.cert_pem == active.cert_pem:
            return active
        if accepted is not None and accepted(candidate):
            return candidate
    return active
