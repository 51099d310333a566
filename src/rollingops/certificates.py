"""The application's etcd client PKI: a private client CA and the leaf certificates it signs.

charmed-etcd makes the common name (CN) of a client certificate the etcd user. It trusts a
client in two ways: it pins the exact leaf sent as ``mtls-cert`` (a changed leaf means a new
trust store, hence an etcd restart), and it trusts every certificate signed by a CA sent over
its ``client-cas`` relation. The leader therefore keeps one private CA per application; it
signs the pinned *enrolment* leaf (which names the user) and each unit signs its own
short-lived leaf, for a key that never leaves the unit's machine. Renewing a unit's leaf then
needs nothing from charmed-etcd. See docs/trust-model.md for what this trusts and risks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = dt.timedelta(days=5 * 365)
CA_RENEWAL_MARGIN = dt.timedelta(days=365)
"""A new CA is made a year before the old one expires, so both are trusted for a year."""
ENROLMENT_LIFETIME = dt.timedelta(days=365)
ENROLMENT_RENEWAL_MARGIN = dt.timedelta(days=30)
UNIT_LEAF_LIFETIME = dt.timedelta(days=7)
UNIT_LEAF_RENEWAL_MARGIN = dt.timedelta(days=3)
BACKDATE = dt.timedelta(minutes=5)
"""Certificates start a little in the past: clocks of etcd members may lag ours."""


@dataclass(frozen=True)
class ClientIdentity:
    """A PEM private key and its certificate; the key must never be logged."""

    key_pem: str
    cert_pem: str

    def __repr__(self) -> str:
        return f"ClientIdentity(cn={common_name(self.cert_pem)!r}, key=<redacted>)"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def generate_key() -> str:
    """A fresh EC P-256 private key, PEM (PKCS#8, unencrypted: files are 0600 root-only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _load_key(key_pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("only EC private keys are used for etcd client identities")  # noqa: TRY004 - bad input, as a garbled PEM is
    return key


def is_usable_key(key_pem: str) -> bool:
    """Whether ``key_pem`` is an EC private key we can use (a garbled file is not)."""
    try:
        _load_key(key_pem)
    except (ValueError, TypeError):
        return False
    return True


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def generate_client_ca(
    name: str, lifetime: dt.timedelta = CA_LIFETIME, now: dt.datetime | None = None
) -> ClientIdentity:
    """A new CA that may sign client certificates only (path length 0)."""
    issued = now or _utcnow()
    key_pem = generate_key()
    key = _load_key(key_pem)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued - BACKDATE)
        .not_valid_after(issued + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ClientIdentity(key_pem=key_pem, cert_pem=_pem(cert))


def issue_client_certificate(
    ca: ClientIdentity | None,
    cn: str,
    key_pem: str,
    lifetime: dt.timedelta,
    now: dt.datetime | None = None,
) -> str:
    """A client-auth leaf for ``key_pem`` whose CN is the etcd user; self-signed without a CA.

    The leaf is never a CA (charmed-etcd refuses a CA as ``mtls-cert``), and is valid no
    longer than the CA that signs it.
    """
    issued = now or _utcnow()
    key = _load_key(key_pem)
    signer_key = _load_key(ca.key_pem) if ca else key
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.encode()).subject if ca else _name(cn)
    not_after = issued + lifetime
    if ca is not None:
        not_after = min(not_after, expires_at(ca.cert_pem))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    return _pem(builder.sign(signer_key, hashes.SHA256()))


def generate_client_identity(
    cn: str,
    lifetime: dt.timedelta = ENROLMENT_LIFETIME,
    now: dt.datetime | None = None,
    ca: ClientIdentity | None = None,
) -> ClientIdentity:
    """A fresh key and a client certificate for it (signed by ``ca``, else self-signed)."""
    key_pem = generate_key()
    return ClientIdentity(key_pem, issue_client_certificate(ca, cn, key_pem, lifetime, now))


def common_name(cert_pem: str) -> str:
    """The subject CN of a PEM certificate, which is the etcd user it authenticates as."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


def expires_at(cert_pem: str) -> dt.datetime:
    """When a PEM certificate stops being valid (UTC)."""
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc


def needs_renewal(cert_pem: str, margin: dt.timedelta, now: dt.datetime | None = None) -> bool:
    """Whether a certificate expires within ``margin`` and should be replaced now."""
    return expires_at(cert_pem) - (now or _utcnow()) <= margin


def is_signed_by(cert_pem: str, ca_cert_pem: str) -> bool:
    """Whether ``ca_cert_pem`` issued ``cert_pem`` (signature checked, not just the names)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_cert_pem.encode())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def matches_key(cert_pem: str, key_pem: str) -> bool:
    """Whether the certificate is for this private key (False if either does not parse)."""
    try:
        cert_key = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
        return cert_key == _load_key(key_pem).public_key()
    except (ValueError, TypeError):
        return False


def fingerprint(cert_pem: str) -> str:
    """SHA-256 of the DER certificate, hex: names a certificate in logs and state."""
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    return hashlib.sha256(der).hexdigest()
