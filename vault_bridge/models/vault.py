"""Typed values of the Vault adapter: the auth methods, token info and PKI role settings.

The adapter (:mod:`vault_bridge.adapters.vault`) builds them from Vault's JSON; the token
decision is :mod:`vault_bridge.decisions.token`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class PkiIssuer:
    """One issuer of a PKI mount (``<mount>/issuer/<id>/json``): its certificate and chain."""

    issuer_id: str
    certificate: str  # the issuer's own certificate (PEM)
    ca_chain: tuple[str, ...]  # the issuer's chain, itself first when Vault includes it
