"""Shared test helpers: a small offline CA to make certificates of any shape."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class OfflineCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def leaf(
        self,
        cn: str = "leaf.example.com",
        *,
        not_before: datetime | None = None,
        lifetime: timedelta = timedelta(days=30),
        ekus: tuple[x509.ObjectIdentifier, ...] = (
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> tuple[str, str]:
        """(certificate PEM, key PEM)"""
        key = key or ec.generate_private_key(ec.SECP256R1())
        start = not_before or datetime.now(UTC) - timedelta(minutes=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
        )
        if ekus:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def make_ca(cn: str = "Test CA") -> OfflineCA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return OfflineCA(cert, key)


@pytest.fixture(scope="session")
def test_ca() -> OfflineCA:
    return make_ca()
