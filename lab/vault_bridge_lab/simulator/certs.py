"""Certificates of a simulated cluster: every check an install makes, and the self-signed
certificates a new cluster starts with."""

from __future__ import annotations

import ipaddress
import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vault_bridge.models.certificates import split_pem_chain
from vault_bridge_lab.simulator.names import INTERNODE_NAMES, MTLS_TRUSTED_CA
from vault_bridge_lab.simulator.routing import ApiError, invalid_request
from vault_bridge_lab.simulator.schemas import CERTIFICATE_ITEM

ACCEPTED_CURVES: Final = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MIN_RSA_BITS: Final = 2048


@dataclass(frozen=True)
class Installed:
    """A certificate as installed: the chain as given (leaf first) and its key."""

    name: str
    chain_pem: str
    key_pem: str | None = field(repr=False)  # private key: never log it
    leaf: x509.Certificate = field(repr=False, compare=False)


@dataclass(frozen=True)
class CertItem:
    """One ``{"name", "certificate", "key"}`` item of an install request, shape-checked."""

    name: str
    certificate: str
    key: str | None = field(repr=False)  # private key: never log it


_RSA_CACHE: list[rsa.RSAPrivateKey] = []
_RSA_CACHE_LOCK = threading.Lock()


def cached_rsa_key(index: int) -> rsa.RSAPrivateKey:
    """RSA 2048 keys made once per process (tens of ms each) and shared by every simulator."""
    with _RSA_CACHE_LOCK:
        while len(_RSA_CACHE) <= index:
            _RSA_CACHE.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _RSA_CACHE[index]


def self_signed(
    common_name: str, key: CertificateIssuerPrivateKeyTypes, host: str, now: datetime
) -> str:
    """A self-signed server+client certificate that loopback clients can verify by name."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(common_name.replace("_", "-")),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    if host not in ("", "0.0.0.0", "::", "127.0.0.1", "localhost"):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: PrivateKeyTypes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_item(raw: Any, where: str) -> CertItem:
    """Shape of one install item: only ``name``, ``certificate`` and ``key``, all strings."""
    if not isinstance(raw, dict):
        raise invalid_request(f"{where} must be a JSON object")
    extra = sorted(set(raw) - CERTIFICATE_ITEM.fields)
    if extra:
        raise invalid_request(f"{where} has unexpected key(s): {', '.join(extra)}")
    name, certificate, key = raw.get("name"), raw.get("certificate"), raw.get("key")
    if not isinstance(name, str) or not name:
        raise invalid_request(f"{where}: 'name' is required and must be a string")
    if not isinstance(certificate, str) or not certificate.strip():
        raise invalid_request(f"{where}: 'certificate' is required and must be a PEM string")
    if key is not None and not isinstance(key, str):
        raise invalid_request(f"{where}: 'key' must be a PEM string")
    return CertItem(name=name, certificate=certificate, key=key)


def _parse_chain(
    name: str, pem: str, bad_cert_status: int, *, ordered: bool = True
) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; ``ordered``: a leaf-first chain, each certificate
    issued by the next (a CA bundle such as ``mtls_trusted_ca`` need not be one)."""
    blocks = split_pem_chain(pem)
    if not blocks:
        raise ApiError(bad_cert_status, "invalid_certificate", f"{name}: no PEM certificate")
    try:
        chain = [x509.load_pem_x509_certificate(block.encode()) for block in blocks]
        for cert in chain:
            _ = cert.extensions  # parse them now: a malformed extension is a bad certificate
    except ValueError as exc:
        raise ApiError(
            bad_cert_status, "invalid_certificate", f"{name}: not a PEM certificate: {exc}"
        ) from exc
    for child, parent in itertools.pairwise(chain if ordered else []):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature) as exc:
            raise ApiError(
                bad_cert_status,
                "invalid_certificate",
                f"{name}: the chain must be leaf first, each certificate issued by the next "
                f"({child.subject.rfc4514_string()} is not issued by "
                f"{parent.subject.rfc4514_string()})",
            ) from exc
    return chain


def _parse_key(name: str, pem: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The message names the problem only; the key itself is never echoed or logged.
        raise ApiError(
            400, "invalid_key", f"{name}: the key is not an unencrypted PEM private key"
        ) from exc


def _check_key(name: str, key: PrivateKeyTypes) -> None:
    """RSA of 2048 bits or more, or EC on a NIST curve; internode certificates RSA only."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ApiError(
                400, "weak_key", f"{name}: RSA key of {key.key_size} bits, at least 2048 needed"
            )
        return
    if name in INTERNODE_NAMES:
        raise ApiError(400, "unsupported_key_type", f"{name}: internode certificates take RSA keys")
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ACCEPTED_CURVES)):
        raise ApiError(400, "unsupported_key_type", f"{name}: key type not supported")


def _check_eku(name: str, leaf: x509.Certificate) -> None:
    try:
        usages = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    wanted = {
        ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
        ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    }
    missing = [label for oid, label in wanted.items() if oid not in usages]
    if missing:
        raise ApiError(
            400,
            "invalid_extended_key_usage",
            f"{name}: extended key usage must contain serverAuth and clientAuth "
            f"(missing {', '.join(missing)})",
        )


def _check_not_expired(name: str, chain: list[x509.Certificate], now: datetime) -> None:
    for cert in chain:
        if cert.not_valid_after_utc <= now:
            raise ApiError(
                406,
                "certificate_expired",
                f"{name}: {cert.subject.rfc4514_string()} expired at "
                f"{cert.not_valid_after_utc.isoformat()}",
            )


def validate_certificate(item: CertItem, *, now: datetime, bad_cert_status: int) -> Installed:
    """Every check the cluster makes on one certificate; raises :class:`ApiError`.

    ``bad_cert_status`` is what an unparseable certificate answers: 400 on the bulk endpoint,
    404 ("invalid certificate") on ``update_cert``.
    """
    name = item.name
    chain = _parse_chain(name, item.certificate, bad_cert_status, ordered=name != MTLS_TRUSTED_CA)
    leaf = chain[0]
    if name == MTLS_TRUSTED_CA:
        if item.key:
            raise invalid_request(f"{name} takes a certificate only, no key")
        _check_not_expired(name, chain, now)
        return Installed(name=name, chain_pem=item.certificate, key_pem=None, leaf=leaf)
    if not item.key:
        raise invalid_request(f"{name}: 'key' is required")
    key = _parse_key(name, item.key)
    try:
        matches = _spki(key.public_key()) == _spki(leaf.public_key())
    except (ValueError, UnsupportedAlgorithm):
        matches = False
    if not matches:
        raise ApiError(
            400, "key_values_mismatch", f"{name}: the key does not match the certificate"
        )
    _check_not_expired(name, chain, now)
    _check_key(name, key)
    _check_eku(name, leaf)
    return Installed(name=name, chain_pem=item.certificate, key_pem=item.key, leaf=leaf)
