"""The resolved settings: every default applied, durations as timedelta; what the rest of
the program uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    SecretStr,
)

from vault_bridge.config.schema import (
    DEFAULT_OVERDUE_AFTER,
    DEFAULT_WINDOW_SAFETY_MARGIN,
    AgentConfig,
    CrdbUpdate,
    HaConfig,
    Login,
    VaultConfig,
)
from vault_bridge.config.validators import VaultSecretRef, _suggest
from vault_bridge.config.windows import MaintenanceWindow
from vault_bridge.errors import ConfigError
from vault_bridge.models.certificates import CertName, KeyType, Mode


@dataclass(frozen=True)
class CertSpec:
    """One certificate of one cluster, every default applied."""

    cluster: str
    name: CertName
    role: str
    common_name: str
    alt_names: tuple[str, ...]
    ip_sans: tuple[str, ...]
    pki_mount: str
    mode: Mode
    key_type: KeyType
    key_bits: int
    ttl: timedelta
    renew_at: float | None
    renew_before: timedelta | None
    issuer_ref: str | None = None
    issuer_migration: timedelta | None = None
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()
    window_safety_margin: float = DEFAULT_WINDOW_SAFETY_MARGIN
    overdue_after: float = DEFAULT_OVERDUE_AFTER
    label: str | None = None  # a database's own certificate: ``bdb:<database>``

    @property
    def key_name(self) -> str:
        """The name it is known by in the state and the journal (``bdb:<database>`` for a
        database's own certificate, the certificate name otherwise)."""
        return self.label or self.name.value


@dataclass(frozen=True)
class DatabaseSpec:
    """A database's own proxy certificate: the database (by name) and the certificate.

    ``cert`` carries the name ``proxy`` for the checks a proxy certificate passes; the status
    and logs name it ``bdb:<database>``."""

    database: str
    cert: CertSpec
    verify_endpoint: str | None

    @property
    def label(self) -> str:
        return f"bdb:{self.database}"


@dataclass(frozen=True)
class LoginSpec:
    """The client certificate vault_bridge logs in to one cluster with (login = "certificate")."""

    cluster: str
    role: str
    common_name: str
    alt_names: tuple[str, ...]
    ip_sans: tuple[str, ...]
    pki_mount: str
    mode: Mode
    key_type: KeyType
    key_bits: int
    ttl: timedelta
    renew_at: float | None
    renew_before: timedelta | None

    @classmethod
    def of(cls, spec: CertSpec) -> LoginSpec:
        return cls(
            cluster=spec.cluster,
            role=spec.role,
            common_name=spec.common_name,
            alt_names=spec.alt_names,
            ip_sans=spec.ip_sans,
            pki_mount=spec.pki_mount,
            mode=spec.mode,
            key_type=spec.key_type,
            key_bits=spec.key_bits,
            ttl=spec.ttl,
            renew_at=spec.renew_at,
            renew_before=spec.renew_before,
        )


@dataclass(frozen=True)
class ClusterSettings:
    name: str
    url: str
    username: str
    password: SecretStr | None  # None when it is read from Vault (password_vault)
    ca_file: str | None
    ca_fingerprint: str | None
    insecure_skip_verify: bool
    timeout: float
    crdb_update: CrdbUpdate
    crdb_cli_path: str
    docker_container: str | None
    docker_host: str | None
    verify_endpoints: Mapping[str, str]
    certificates: tuple[CertSpec, ...]
    password_vault: VaultSecretRef | None = None
    login: Login = "password"
    login_certificate: LoginSpec | None = None
    # The PKI mount whose issuers the cluster's mtls_trusted_ca trusts (None: not managed).
    trusted_ca_mount: str | None = None
    ocsp_responder: Literal["vault"] | None = None
    databases: tuple[DatabaseSpec, ...] = ()
    # PUT /v1/cluster/certificates and update_cert: x-timeout-seconds 900 in the OpenAPI.
    install_timeout: float = 900.0
    # How long the read-back after an internode install waits for the REST API to answer.
    internode_confirm_timeout: float = 600.0

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def endpoint_for(self, name: CertName) -> str | None:
        """Where the certificate is served, for the TLS check after an install."""
        if name.value in self.verify_endpoints:
            return self.verify_endpoints[name.value]
        port = urlsplit(self.url).port or 443
        defaults = {CertName.API: port, CertName.CM: 8443, CertName.METRICS_EXPORTER: 8070}
        if name in defaults:
            return f"{self.host}:{defaults[name]}"
        return None

    def spec(self, name: CertName | str) -> CertSpec | None:
        for spec in self.certificates:
            if spec.name == name:
                return spec
        return None


@dataclass(frozen=True)
class Settings:
    path: Path | None
    vault: VaultConfig
    agent: AgentConfig
    clusters: tuple[ClusterSettings, ...]
    ha: HaConfig | None = None  # [ha]: replicas coordinated through Vault (replica_id set)

    def cluster(self, name: str) -> ClusterSettings:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        known = [c.name for c in self.clusters]
        raise ConfigError(
            f"unknown cluster {name!r}{_suggest(name, known)}; known: {', '.join(known)}"
        )

    def specs(self) -> list[CertSpec]:
        return [spec for cluster in self.clusters for spec in cluster.certificates]
