"""Typed values of the Vault adapter: the auth methods, token info, PKI roles and issuers.

The adapter (:mod:`vault_bridge.adapters.vault`) builds them from Vault's JSON; the token
decision is :mod:`vault_bridge.decisions.token`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

# The service-account token a pod mounts; Kubernetes auth reads it unless jwt_file says otherwise.
DEFAULT_K8S_JWT = "/var/run/secrets/kubernetes.io/serviceaccount/token"


# -- authentication methods ----------------------------------------------------------------


@dataclass(frozen=True)
class TokenAuth:
    """A token from ``token_file`` or else ``$VAULT_TOKEN``; the file is re-read when it changes."""

    token_file: Path | None = None


@dataclass(frozen=True)
class AppRoleAuth:
    """AppRole; the secret ID is read from ``secret_id_file`` at each login."""

    role_id: str
    secret_id_file: Path
    mount: str = "approle"


@dataclass(frozen=True)
class KubernetesAuth:
    """Kubernetes service-account JWT (read from ``jwt_file`` at each login)."""

    role: str
    jwt_file: Path = Path(DEFAULT_K8S_JWT)
    mount: str = "kubernetes"


@dataclass(frozen=True)
class CertAuth:
    """TLS client certificate; ``name`` picks an ``auth/cert/certs/<name>`` entry (any if empty)."""

    cert_file: Path
    key_file: Path
    name: str = ""
    mount: str = "cert"


AuthMethod = TokenAuth | AppRoleAuth | KubernetesAuth | CertAuth


# -- typed answers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenInfo:
    """What matters about the client token. ``expire_time`` is by our clock (now + ttl)."""

    accessor: str
    ttl_seconds: int
    renewable: bool
    expire_time: datetime | None
    policies: tuple[str, ...]


@dataclass(frozen=True)
class PkiRole:
    """The parts of ``<mount>/roles/<name>`` that decide whether a certificate can be had."""

    mount: str
    name: str
    server_flag: bool
    client_flag: bool
    key_type: str
    key_bits: int
    max_ttl_seconds: int
    generate_lease: bool
    allowed_domains: tuple[str, ...]
    allow_subdomains: bool
    allow_glob_domains: bool
    allow_any_name: bool
    allow_ip_sans: bool
    no_store: bool
    # every field as Vault returned it, so an update can keep what vault-bridge does not manage
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_vault(cls, mount: str, name: str, data: dict[str, Any]) -> PkiRole:
        domains = data.get("allowed_domains") or []
        if isinstance(domains, str):
            domains = [d for d in domains.split(",") if d]
        return cls(
            mount=mount,
            name=name,
            server_flag=bool(data.get("server_flag", True)),
            client_flag=bool(data.get("client_flag", True)),
            key_type=str(data.get("key_type", "rsa")),
            key_bits=int(data.get("key_bits") or 0),
            max_ttl_seconds=int(data.get("max_ttl") or 0),
            generate_lease=bool(data.get("generate_lease", False)),
            allowed_domains=tuple(str(d) for d in domains),
            allow_subdomains=bool(data.get("allow_subdomains", False)),
            allow_glob_domains=bool(data.get("allow_glob_domains", False)),
            allow_any_name=bool(data.get("allow_any_name", False)),
            allow_ip_sans=bool(data.get("allow_ip_sans", True)),
            no_store=bool(data.get("no_store", False)),
            data=dict(data),
        )


# -- PKI issuers (multi-issuer mounts) -------------------------------------------------------


@dataclass(frozen=True)
class IssuerEntry:
    """One line of ``LIST <mount>/issuers``: an issuer's ID, name and whether it is the
    mount's default (the one ``<mount>/sign/<role>`` uses) and holds a key (can sign)."""

    issuer_id: str
    name: str
    is_default: bool
    has_key: bool

    @classmethod
    def list_from_vault(cls, data: Mapping[str, Any]) -> tuple[IssuerEntry, ...]:
        """From the ``data`` of the LIST answer (``keys`` and ``key_info``); entries that are
        not strings are dropped rather than guessed at."""
        keys = data.get("keys")
        info = data.get("key_info")
        if not isinstance(keys, list):
            return ()
        details = info if isinstance(info, Mapping) else {}
        entries = []
        for key in keys:
            if not isinstance(key, str) or not key:
                continue
            item = details.get(key)
            item = item if isinstance(item, Mapping) else {}
            entries.append(
                cls(
                    issuer_id=key,
                    name=str(item.get("issuer_name") or ""),
                    is_default=item.get("is_default") is True,
                    has_key=bool(item.get("key_id")),
                )
            )
        return tuple(entries)


@dataclass(frozen=True)
class PkiIssuer:
    """One issuer of a PKI mount: its CA certificate and the chain above it.

    ``usage`` and ``revoked`` come only from the authenticated read of ``<mount>/issuer/<ref>``
    (``None`` from the unauthenticated ``/json`` one).
    """

    mount: str
    issuer_id: str
    name: str
    certificate: str  # the issuer's own CA certificate (PEM)
    ca_chain: tuple[str, ...]  # that certificate first, then the CAs above it, as Vault has them
    not_after: datetime
    subject: str
    usage: tuple[str, ...] | None = None
    revoked: bool | None = None

    @property
    def ref(self) -> str:
        """How logs and messages name it: the name when it has one, else the ID."""
        return self.name or self.issuer_id

    @property
    def can_issue(self) -> bool | None:
        """Whether its usage allows issuing leaves (None: usage unknown)."""
        if self.usage is None:
            return None
        return "issuing-certificates" in self.usage and not self.revoked

    def x509(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate.encode())

    @classmethod
    def from_vault(cls, mount: str, data: Mapping[str, Any], chain: list[str]) -> PkiIssuer:
        """From the ``data`` of ``<mount>/issuer/<ref>[/json]``; ``chain`` is its ``ca_chain``
        already split into PEMs. Raises ``ValueError`` for a certificate that does not parse."""
        pem = str(data.get("certificate") or "")
        cert = x509.load_pem_x509_certificate(pem.encode())
        usage_raw = data.get("usage")
        usage: tuple[str, ...] | None = None
        if isinstance(usage_raw, str):
            usage = tuple(u for u in usage_raw.split(",") if u)
        elif isinstance(usage_raw, list):
            usage = tuple(str(u) for u in usage_raw)
        revoked = data.get("revoked")
        return cls(
            mount=mount,
            issuer_id=str(data.get("issuer_id") or ""),
            name=str(data.get("issuer_name") or ""),
            certificate=pem,
            ca_chain=tuple(chain) or (pem,),
            not_after=cert.not_valid_after_utc.astimezone(UTC),
            subject=cert.subject.rfc4514_string(),
            usage=usage,
            revoked=revoked if isinstance(revoked, bool) else None,
        )


@dataclass(frozen=True)
class MountIssuers:
    """Every issuer of a PKI mount, as read once per pass, and which one is the default.

    ``default_id`` is None when the mount did not say (an older Vault without multi-issuer
    support: then ``issuers`` holds the single CA of ``<mount>/cert/ca_chain``).
    """

    mount: str
    issuers: tuple[PkiIssuer, ...]
    default_id: str | None

    @property
    def default(self) -> PkiIssuer | None:
        for issuer in self.issuers:
            if issuer.issuer_id == self.default_id:
                return issuer
        return None

    def find(self, ref: str) -> PkiIssuer | None:
        """The issuer with this ID or name (``default``: the default one)."""
        if ref == "default":
            return self.default
        for issuer in self.issuers:
            if ref in (issuer.issuer_id, issuer.name):
                return issuer
        return None

    def chains(self) -> list[str]:
        """Every issuer's chain, each PEM once, in order (the trust for a managed ``api``)."""
        out: list[str] = []
        for issuer in self.issuers:
            for pem in issuer.ca_chain:
                if pem not in out:
                    out.append(pem)
        return out
