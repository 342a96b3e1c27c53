"""Local key material and the checks a certificate must pass before it is installed.

Keys made here (sign mode) never leave the process except inside the install request to the
cluster; nothing in this module logs or writes a key.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vault_bridge.errors import CertificateError
from vault_bridge.models.certificates import CertName, IssuedCertificate, KeyType, load_leaf
from vault_bridge.models.times import iso

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_CURVES: dict[int, ec.EllipticCurve] = {256: ec.SECP256R1(), 384: ec.SECP384R1()}


def generate_key(key_type: KeyType, key_bits: int) -> PrivateKey:
    """A new private key: RSA of ``key_bits`` or EC on P-256/P-384."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    return ec.generate_private_key(_CURVES[key_bits])


def key_to_pem(key: PrivateKey) -> str:
    """Unencrypted PEM (PKCS#1 for RSA, SEC1 for EC), the forms Redis Enterprise accepts."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def build_csr(
    key: PrivateKey, common_name: str, alt_names: tuple[str, ...], ip_sans: tuple[str, ...]
) -> str:
    """A PEM CSR for ``common_name`` with DNS and IP subject alternative names."""
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in alt_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_sans]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _public_der(public: Any) -> bytes:
    der: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def key_matches(certificate_pem: str, key_pem: str) -> bool:
    """True when the private key belongs to the certificate's public key."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        return False
    return _public_der(key.public_key()) == _public_der(load_leaf(certificate_pem).public_key())


def check_before_install(
    issued: IssuedCertificate,
    name: CertName,
    *,
    now: datetime,
    requested_ttl: timedelta,
    client_only: bool = False,
    key: PrivateKey | None = None,
) -> None:
    """Refuse a certificate the cluster must not get; raise :class:`CertificateError`.

    - NotAfter well in the future: at least 10% of the requested TTL left (an issuer that is
      about to expire, or has expired, hands out certificates that are useless or dead);
    - both serverAuth and clientAuth in the extended key usage (Redis Enterprise needs both;
      ``client_only``: clientAuth, for the certificate vault_bridge logs in with);
    - the key matches the certificate; internode certificates carry RSA keys.

    ``key`` is the key made in this process for the CSR (sign mode): the certificate's public
    key is compared with it directly, without loading the PEM again. A key from Vault (issue
    mode) is loaded from its PEM and checked.
    """
    cert = load_leaf(issued.certificate)
    remaining = cert.not_valid_after_utc - now
    minimum = requested_ttl * 0.1
    if remaining <= timedelta(0):
        raise CertificateError(
            f"Vault issued an already expired certificate (NotAfter "
            f"{iso(cert.not_valid_after_utc)}): does the issuing CA expire?"
        )
    if remaining < minimum:
        raise CertificateError(
            f"Vault issued a certificate valid for only {int(remaining.total_seconds())}s "
            f"(NotAfter {iso(cert.not_valid_after_utc)}), less than 10% of the requested "
            f"TTL: the issuing CA probably expires soon"
        )
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = set(eku)
    except x509.ExtensionNotFound:
        usages = set()
    missing = [
        label
        for label, oid in (
            ("serverAuth", ExtendedKeyUsageOID.SERVER_AUTH),
            ("clientAuth", ExtendedKeyUsageOID.CLIENT_AUTH),
        )
        if oid not in usages and not (client_only and label == "serverAuth")
    ]
    if missing:
        flags = "client_flag" if client_only else "server_flag and client_flag"
        raise CertificateError(
            f"certificate lacks the {' and '.join(missing)} extended key usage; set "
            f"{flags} to true on the PKI role"
        )
    if key is not None:
        matches = _public_der(key.public_key()) == _public_der(cert.public_key())
    else:
        matches = key_matches(issued.certificate, issued.private_key)
    if not matches:
        raise CertificateError("the private key does not match the issued certificate")
    if name.internode and not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise CertificateError(f"{name.value} needs an RSA key")
