"""Test PKI for the etcd test bed, built with ``cryptography`` (no openssl, no cfssl).

A throw-away CA (EC P-256) signs the etcd members' server/peer certificates and the ``root``
admin's client certificate. The application's client identity is *not* signed by it: it is the
engine's own self-signed certificate (``rollingops.certificates``), trusted by adding it to
etcd's client CA bundle, exactly as charmed-etcd does. ``trust_bundle`` builds that bundle.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIFETIME = dt.timedelta(days=2)
"""Long enough for any test run, short enough that a leaked key is worthless."""

LOOPBACK_IP = ipaddress.IPv4Address("127.0.0.1")


@dataclass(frozen=True)
class KeyPair:
    """A PEM private key and its PEM certificate."""

    key_pem: str
    cert_pem: str

    def __repr__(self) -> str:
        return "KeyPair(key=<redacted>)"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CertificateAuthority:
    """A CA that lives for one test bed; its key never touches the disk."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    @classmethod
    def generate(cls, cn: str = "rollingops test CA") -> CertificateAuthority:
        """Create a fresh self-signed CA that may only sign leaf certificates."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def cert_pem(self) -> str:
        """The CA certificate, what clients use to verify the etcd servers."""
        return _cert_pem(self.cert)

    def issue_server_cert(self, cn: str) -> KeyPair:
        """A member certificate, valid for 127.0.0.1 and localhost.

        etcd presents the same certificate as a server (to clients and peers) and as a client
        (when dialling peers under ``--peer-client-cert-auth``), hence both EKUs.
        """
        sans = x509.SubjectAlternativeName(
            [x509.IPAddress(LOOPBACK_IP), x509.DNSName("localhost")]
        )
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        return self._issue(cn, usages, sans)

    def issue_client_cert(
        self,
        cn: str,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> KeyPair:
        """A CA-signed client certificate; etcd authenticates it as the user named ``cn``.

        ``not_before``/``not_after`` mint one that etcd's clock finds not yet valid or expired
        (clock skew between a machine and etcd); by default it is valid for ``LIFETIME``.
        """
        validity = (not_before, not_after)
        return self._issue(cn, [ExtendedKeyUsageOID.CLIENT_AUTH], None, validity)

    def _issue(
        self,
        cn: str,
        usages: list[x509.ObjectIdentifier],
        sans: x509.SubjectAlternativeName | None,
        validity: tuple[dt.datetime | None, dt.datetime | None] = (None, None),
    ) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        not_before, not_after = validity
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans is not None:
            builder = builder.add_extension(sans, critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return KeyPair(key_pem=_key_pem(key), cert_pem=_cert_pem(cert))


def trust_bundle(*cert_pems: str) -> str:
    """Concatenate PEM certificates into one CA bundle (etcd's ``--trusted-ca-file``)."""
    return "".join(pem if pem.endswith("\n") else pem + "\n" for pem in cert_pems)


def write_public(path: Path, pem: str) -> Path:
    """Write a certificate or bundle; public material, so world-readable is fine."""
    path.write_text(pem)
    path.chmod(0o644)
    return path


def write_private(path: Path, pem: str) -> Path:
    """Write a private key readable by its owner only, never briefly wider.

    Created with mode 0600 rather than chmod-ed afterwards, so there is no window in which
    another local user could read it; ``fchmod`` covers a file that already existed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem)
    return path


def write_pair(directory: Path, stem: str, pair: KeyPair) -> tuple[Path, Path]:
    """Write ``<stem>.pem`` and ``<stem>-key.pem``; return (cert file, key file)."""
    cert_file = write_public(directory / f"{stem}.pem", pair.cert_pem)
    key_file = write_private(directory / f"{stem}-key.pem", pair.key_pem)
    return cert_file, key_file
