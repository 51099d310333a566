"""The application's client PKI, kept by the leader in one Juju app secret.

It holds the private client CA (sent to charmed-etcd over ``client-cas``) and the enrolment
certificate (sent as ``mtls-cert``): a leaf signed by that CA whose CN names the etcd user.
charmed-etcd pins the enrolment leaf, so it changes only when it must (a new cluster-id, the
yearly renewal, a new CA); units connect with leaves of their own (``credentials``). Keys never
appear in relation data or logs. Old secret revisions are removed once Juju says nobody tracks
them (``secret-remove``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

import ops

from rollingops.certificates import (
    CA_RENEWAL_MARGIN,
    ENROLMENT_RENEWAL_MARGIN,
    ClientIdentity,
    common_name,
    generate_client_ca,
    generate_client_identity,
    is_signed_by,
    matches_key,
    needs_renewal,
)

logger = logging.getLogger(__name__)

LABEL = "rollingops-client-identity"
CN_LIMIT = 64
"""X.509 caps a common name at 64 characters."""


@dataclass(frozen=True)
class AppIdentity:
    """The client CA, the enrolment pair it signed and, during a CA change, the old CA."""

    ca: ClientIdentity
    enrolment: ClientIdentity
    previous_ca_cert: str = ""

    @property
    def trusted_cas(self) -> set[str]:
        """What charmed-etcd must trust over ``client-cas``: the CA, and the old one a while."""
        return {self.ca.cert_pem} | ({self.previous_ca_cert} if self.previous_ca_cert else set())

    def content(self) -> dict[str, str]:
        """The secret's content (keys as Juju allows them)."""
        content = {
            "ca-key": self.ca.key_pem,
            "ca-cert": self.ca.cert_pem,
            "key": self.enrolment.key_pem,
            "cert": self.enrolment.cert_pem,
        }
        if self.previous_ca_cert:
            content["previous-ca-cert"] = self.previous_ca_cert
        return content


def client_cn(app: str, model_uuid: str, cluster_id: str) -> str:
    """CN, hence etcd user: unique per application, model and lock domain.

    The cluster-id is part of it because charmed-etcd binds one user to one prefix: a new
    cluster-id needs a new user, which charmed-etcd creates (removing the old one) when the
    enrolment certificate's CN changes under the same request-id.
    """
    digest = hashlib.sha256(f"{model_uuid}/{app}/{cluster_id}".encode()).hexdigest()[:8]
    suffix = f"-{model_uuid[:8]}-{digest}"
    return f"rollingops-{app}"[: CN_LIMIT - len(suffix)] + suffix


def read_identity(model: ops.Model) -> AppIdentity | None:
    """The identity from the app secret, or ``None`` before the leader created it."""
    return _identity_of(_secret_content(model))


def _secret_content(model: ops.Model) -> dict[str, str]:
    try:
        return model.get_secret(label=LABEL).get_content(refresh=True)
    except (ops.SecretNotFoundError, ops.ModelError):
        return {}


def _identity_of(content: dict[str, str]) -> AppIdentity | None:
    """The usable identity in ``content``; ``None`` if there is none (the leader replaces it).

    An old CA that is not a self-signed certificate (garbled, or some other certificate) is
    dropped: it would make every renewal check fail and reach charmed-etcd's trust store.
    """
    try:
        identity = AppIdentity(
            ca=ClientIdentity(content["ca-key"], content["ca-cert"]),
            enrolment=ClientIdentity(content["key"], content["cert"]),
        )
    except KeyError:
        return None  # none yet, or an identity from before the client CA
    if not _well_formed(identity):
        logger.warning("the client identity secret is not usable: the leader replaces it")
        return None
    previous = content.get("previous-ca-cert", "")
    if previous and not is_signed_by(previous, previous):
        logger.warning("the client identity secret's previous CA is not a CA certificate: dropped")
        previous = ""
    return AppIdentity(identity.ca, identity.enrolment, previous)


def _well_formed(identity: AppIdentity) -> bool:
    """Keys match their certificates and the CA signed the enrolment leaf."""
    return (
        matches_key(identity.ca.cert_pem, identity.ca.key_pem)
        and matches_key(identity.enrolment.cert_pem, identity.enrolment.key_pem)
        and is_signed_by(identity.enrolment.cert_pem, identity.ca.cert_pem)
    )


def renewed_identity(
    current: AppIdentity | None, cn: str, now: dt.datetime | None = None
) -> AppIdentity | None:
    """The identity the application should have now, or ``None`` if ``current`` is right.

    A CA within a year of expiry is replaced (the old one stays trusted until it expires);
    the enrolment leaf is reissued when its CN is not ``cn``, when the CA changed, or a month
    before it expires.
    """
    if current is not None and needs_renewal(current.ca.cert_pem, CA_RENEWAL_MARGIN, now):
        ca = generate_client_ca(f"{cn} client CA", now=now)
        enrolment = generate_client_identity(cn, now=now, ca=ca)
        return AppIdentity(ca, enrolment, previous_ca_cert=current.ca.cert_pem)
    if current is None:
        ca = generate_client_ca(f"{cn} client CA", now=now)
        return AppIdentity(ca, generate_client_identity(cn, now=now, ca=ca))
    enrolment = current.enrolment.cert_pem
    if (
        common_name(enrolment) != cn
        or not is_signed_by(enrolment, current.ca.cert_pem)
        or needs_renewal(enrolment, ENROLMENT_RENEWAL_MARGIN, now)
    ):
        fresh = generate_client_identity(cn, now=now, ca=current.ca)
        return AppIdentity(current.ca, fresh, current.previous_ca_cert)
    if current.previous_ca_cert and needs_renewal(current.previous_ca_cert, dt.timedelta(0), now):
        return AppIdentity(current.ca, current.enrolment)
    return None


def ensure_identity(model: ops.Model, cn: str) -> AppIdentity:
    """Leader only: create the identity, renew what is due, or repair it; and store it."""
    content = _secret_content(model)
    current = _identity_of(content)
    fresh = renewed_identity(current, cn)
    if fresh is None:
        assert current is not None  # noqa: S101 - renewed_identity creates when there is none
        if current.content() == content:
            return current
        fresh = current  # stored without what _identity_of dropped
    try:
        model.get_secret(label=LABEL).set_content(fresh.content())
    except ops.SecretNotFoundError:
        model.app.add_secret(
            fresh.content(), label=LABEL, description="rollingops etcd client CA and enrolment"
        )
    return fresh
