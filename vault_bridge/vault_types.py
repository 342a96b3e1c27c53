"""Values of the Vault adapter: the auth methods, token and PKI role info, and the token decision.

Kept apart from :mod:`vault_bridge.vault` (the adapter that does the I/O) so the decisions can be
read and tested on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

DEFAULT_K8S_JWT = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
RENEW_FRACTION = 2 / 3


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
    jwt_file: Path = DEFAULT_K8S_JWT
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


# -- the token decision (pure) -----------------------------------------------------------------

TokenAction = Literal["none", "renew", "login"]


def token_action(
    *,
    now: datetime,
    obtained_at: datetime,
    ttl_seconds: int,
    renewable: bool,
    relogin_useful: bool = True,
) -> TokenAction:
    """What to do with a token that had ``ttl_seconds`` left at ``obtained_at``.

    Nothing before 2/3 of that TTL has passed; then renew it when renewable, else log in again
    (when that can give a fresh token: not for a fixed token that has not changed). An expired
    token is never renewed. A TTL of 0 means the token does not expire (a root token).
    """
    if ttl_seconds <= 0:
        return "none"
    elapsed = (now - obtained_at).total_seconds()
    if elapsed >= ttl_seconds:
        return "login"
    if elapsed < ttl_seconds * RENEW_FRACTION:
        return "none"
    if renewable:
        return "renew"
    return "login" if relogin_useful else "none"
