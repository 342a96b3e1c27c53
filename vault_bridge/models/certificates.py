"""Typed values that cross the boundaries: certificate names, issued and installed certificates.

JSON from Vault or from a cluster becomes one of these frozen dataclasses inside the adapter;
nothing past an adapter passes raw dicts around.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vault_bridge.errors import CertificateError


class CertName(enum.StrEnum):
    """Certificate names a Redis Enterprise cluster knows (installable ones)."""

    CM = "cm"
    API = "api"
    PROXY = "proxy"
    SYNCER = "syncer"
    METRICS_EXPORTER = "metrics_exporter"
    LDAP_CLIENT = "ldap_client"
    CCS_INTERNODE = "ccs_internode_encryption"
    DATA_INTERNODE = "data_internode_encryption"

    @property
    def internode(self) -> bool:
        """Internode certificates: RSA only, 7.22.2+, sent in a request of their own."""
        return self in (CertName.CCS_INTERNODE, CertName.DATA_INTERNODE)

    @property
    def needs_followup(self) -> bool:
        """A change of this certificate needs the Active-Active / Replica Of follow-ups."""
        return self in (CertName.PROXY, CertName.SYNCER)


Mode = Literal["sign", "issue"]
KeyType = Literal["rsa", "ec"]
CertState = Literal["ok", "due", "foreign", "missing", "expired", "revoked"]

PEM_CERT_BEGIN = "-----BEGIN CERTIFICATE-----"


def split_pem_chain(pem: str) -> list[str]:
    """Split a PEM bundle into its certificates, in order, each ending with a newline."""
    parts: list[str] = []
    for block in pem.split(PEM_CERT_BEGIN)[1:]:
        body = block.split("-----END CERTIFICATE-----")[0]
        parts.append(f"{PEM_CERT_BEGIN}{body}-----END CERTIFICATE-----\n")
    return parts


def load_leaf(pem: str) -> x509.Certificate:
    """Parse the first certificate of a PEM chain."""
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from exc


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER encoding, lowercase hex without separators."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def serial_hex(cert: x509.Certificate) -> str:
    """Serial number in Vault's colon-separated lowercase hex form."""
    raw = f"{cert.serial_number:x}"
    if len(raw) % 2:
        raw = "0" + raw
    return ":".join(raw[i : i + 2] for i in range(0, len(raw), 2))


@dataclass(frozen=True)
class CertificateInfo:
    """What can be read off a certificate without its key."""

    serial: str
    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    fingerprint: str
    self_signed: bool

    @property
    def lifetime_seconds(self) -> float:
        return (self.not_after - self.not_before).total_seconds()

    @classmethod
    def from_cert(cls, cert: x509.Certificate) -> CertificateInfo:
        return cls(
            serial=serial_hex(cert),
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            not_before=cert.not_valid_before_utc.astimezone(UTC),
            not_after=cert.not_valid_after_utc.astimezone(UTC),
            fingerprint=fingerprint(cert),
            self_signed=cert.issuer == cert.subject,
        )

    @classmethod
    def from_pem(cls, pem: str) -> CertificateInfo:
        return cls.from_cert(load_leaf(pem))


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate Vault issued, with the key that goes with it.

    The private key is never part of ``repr`` and must never be logged or written to disk.
    """

    certificate: str  # leaf PEM
    ca_chain: tuple[str, ...]  # intermediates (and possibly the root), leaf excluded
    private_key: str = field(repr=False)
    serial: str
    not_after: datetime
    lease_id: str | None = None
    issuing_ca: str = ""

    @property
    def chain_pem(self) -> str:
        """Leaf first, then intermediates; self-signed roots are left out."""
        parts = [self.certificate.strip() + "\n"]
        for pem in self.ca_chain:
            if not CertificateInfo.from_pem(pem).self_signed:
                parts.append(pem.strip() + "\n")
        return "".join(parts)

    @property
    def info(self) -> CertificateInfo:
        return CertificateInfo.from_pem(self.certificate)

    @classmethod
    def from_vault(cls, data: dict[str, Any], private_key: str | None = None) -> IssuedCertificate:
        """Build from the ``data`` of ``<mount>/issue`` or ``<mount>/sign``.

        ``private_key`` is the locally generated key in sign mode; in issue mode Vault returns it.
        """
        try:
            leaf = str(data["certificate"])
            chain_raw = data.get("ca_chain") or []
            if isinstance(chain_raw, str):
                chain_raw = [chain_raw]
            chain: list[str] = []
            for item in chain_raw:
                chain.extend(split_pem_chain(str(item)))
            leaf_parts = split_pem_chain(leaf)
            if len(leaf_parts) > 1:  # some roles return the chain inside "certificate"
                leaf, extra = leaf_parts[0], leaf_parts[1:]
                chain = [*extra, *[c for c in chain if c not in extra]]
            key = private_key if private_key is not None else str(data["private_key"])
        except KeyError as exc:
            raise CertificateError(f"Vault answer lacks {exc.args[0]!r}") from exc
        info = CertificateInfo.from_pem(leaf)
        lease = data.get("lease_id") or None
        return cls(
            certificate=leaf,
            ca_chain=tuple(chain),
            private_key=key,
            serial=info.serial,
            not_after=info.not_after,
            lease_id=str(lease) if lease else None,
            issuing_ca=str(data.get("issuing_ca") or ""),
        )


@dataclass(frozen=True)
class InstalledCertificate:
    """A certificate as a cluster reports it in ``GET /v1/cluster/certificates``."""

    name: str
    pem: str  # the chain as installed, leaf first
    info: CertificateInfo

    @classmethod
    def from_pem(cls, name: str, pem: str) -> InstalledCertificate:
        return cls(name=name, pem=pem, info=CertificateInfo.from_pem(pem))


@dataclass(frozen=True)
class CertChange:
    """A certificate that replaced another on a cluster: public parts only (safe to persist).

    This is what the Active-Active and Replica Of follow-ups need: the old certificate finds
    the affected databases, the new one goes into them.
    """

    cluster: str
    name: str
    new_pem: str
    old_pem: str | None
