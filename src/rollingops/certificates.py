"""The application's etcd client identity: an EC P-256 key and a self-signed certificate.

charmed-etcd authenticates a client by the common name of its certificate (the etcd user is the
CN) and trusts the certificate itself, so no CA of ours is involved: the leader generates one
identity per subordinate application, stores it in a Juju secret and renews it before it expires.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_LIFETIME = dt.timedelta(days=90)
RENEWAL_MARGIN = dt.timedelta(days=30)


@dataclass(frozen=True)
class ClientIdentity:
    """A PEM private key and its certificate; the key must never be logged."""

    key_pem: str
    cert_pem: str

    def __repr__(self) -> str:
        return f"ClientIdentity(cn={common_name(self.cert_pem)!r}, key=<redacted>)"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def generate_client_identity(
    cn: str,
    lifetime: dt.timedelta = DEFAULT_LIFETIME,
    now: dt.datetime | None = None,
) -> ClientIdentity:
    """Create a fresh key and a self-signed client certificate whose subject CN is ``cn``."""
    issued = now or _utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued - dt.timedelta(minutes=5))
        .not_valid_after(issued + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return ClientIdentity(
        key_pem=key_pem, cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode()
    )


def common_name(cert_pem: str) -> str:
    """The subject CN of a PEM certificate, which is the etcd user it authenticates as."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


def expires_at(cert_pem: str) -> dt.datetime:
    """When a PEM certificate stops being valid (UTC)."""
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc


def needs_renewal(
    cert_pem: str,
    now: dt.datetime | None = None,
    margin: dt.timedelta = RENEWAL_MARGIN,
) -> bool:
    """Whether a certificate expires within ``margin`` and should be replaced now."""
    return expires_at(cert_pem) - (now or _utcnow()) <= margin
