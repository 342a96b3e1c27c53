"""The one adapter for TLS handshakes with the endpoints that serve a certificate."""

from __future__ import annotations

import socket
import ssl

from cryptography import x509

from vault_bridge.config.validators import parse_hostport
from vault_bridge.errors import VerificationError
from vault_bridge.models.certificates import CertificateInfo


def served_certificate(
    endpoint: str, *, timeout: float = 5.0, server_name: str | None = None
) -> CertificateInfo:
    """Open a TLS connection to ``host:port`` and return the leaf it serves (no trust check)."""
    host, port = parse_hostport(endpoint, default_port=443)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name or host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise VerificationError(f"TLS handshake with {endpoint} failed: {exc}") from exc
    if not der:
        raise VerificationError(f"{endpoint} presented no certificate")
    return CertificateInfo.from_cert(x509.load_der_x509_certificate(der))


def verify_chain(endpoint: str, ca_pem: str, *, timeout: float = 5.0) -> CertificateInfo:
    """A verifying handshake: the served chain must lead to ``ca_pem`` (host name not checked)."""
    host, port = parse_hostport(endpoint, default_port=443)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=ca_pem)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        raise VerificationError(
            f"{endpoint} serves a chain that does not lead to the CA: {exc.verify_message}"
        ) from exc
    except OSError as exc:
        raise VerificationError(f"TLS handshake with {endpoint} failed: {exc}") from exc
    assert der is not None
    return CertificateInfo.from_cert(x509.load_der_x509_certificate(der))
