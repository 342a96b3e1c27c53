"""The configuration file's schema: the pydantic models of each section and their defaults.

The values' checks are in :mod:`vault_bridge.config.validators`, loading and resolution in
:mod:`vault_bridge.config.loading`, the resolved settings in :mod:`vault_bridge.config.settings`.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from vault_bridge.config.durations import parse_duration
from vault_bridge.config.limits import DEFAULT_CONCURRENCY, MAX_CONCURRENCY
from vault_bridge.config.validators import (
    Duration,
    VaultSecretRef,
    _check_duration,
    _check_issuer_ref,
    _check_windows,
    check_dns_name,
    check_ip,
    parse_hostport,
)
from vault_bridge.models.certificates import KeyType, Mode

AuthMethodName = Literal["token", "approle", "kubernetes", "cert"]
CrdbUpdate = Literal["rest", "crdb-cli", "docker", "none"]
Login = Literal["password", "certificate"]
LogFormat = Literal["text", "json"]

_AUTH_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    # method: (required, allowed)
    "token": (set(), {"token_file"}),
    "approle": ({"role_id", "secret_id_file"}, {"role_id", "secret_id_file", "mount"}),
    "kubernetes": ({"role"}, {"role", "jwt_file", "mount"}),
    "cert": ({"cert_file", "key_file"}, {"cert_file", "key_file", "name", "mount"}),
}
_AUTH_MOUNT_DEFAULT = {"approle": "approle", "kubernetes": "kubernetes", "cert": "cert"}
# A certificate is renewed once this fraction of its lifetime has passed (certbot: 2/3).
DEFAULT_RENEW_AT = 0.667
# A planned renewal waits for a maintenance window until less than this fraction is left.
DEFAULT_WINDOW_SAFETY_MARGIN = 0.2
# A certificate not renewed this fraction of its lifetime after its renewal time is overdue.
DEFAULT_OVERDUE_AFTER = 0.05


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowSettings(_Strict):
    """Keys allowed in [defaults], in each cluster and in each certificate table."""

    maintenance_window: str | list[str] | None = None
    window_safety_margin: float | None = Field(default=None, gt=0, lt=1)

    _win = field_validator("maintenance_window")(_check_windows)


class AuthConfig(_Strict):
    method: AuthMethodName = "token"
    token_file: str | None = None
    role_id: str | None = None
    secret_id_file: str | None = None
    role: str | None = None
    jwt_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    name: str | None = None
    mount: str | None = None

    @model_validator(mode="after")
    def _fields_for_method(self) -> AuthConfig:
        required, allowed = _AUTH_FIELDS[self.method]
        given = {k for k in self.model_fields_set if k != "method" and getattr(self, k)}
        for key in sorted(required - given):
            raise ValueError(f"missing key {key!r}: required for method {self.method!r}")
        for key in sorted(given - allowed):
            raise ValueError(f"key {key!r} does not apply to method {self.method!r}")
        return self


class VaultConfig(_Strict):
    address: str | None = None
    ca_cert: str | None = None
    namespace: str | None = None
    timeout: float = Field(default=10.0, gt=0)
    auth: AuthConfig = AuthConfig()


class CertSettings(WindowSettings):
    """Keys allowed in [defaults] and, as overrides, in each certificate table."""

    pki_mount: str | None = None
    mode: Mode | None = None
    key_type: KeyType | None = None
    key_bits: int | None = None
    ttl: str | None = None
    renew_at: float | None = Field(default=None, gt=0, lt=1)
    renew_before: str | None = None
    issuer_ref: str | None = None
    issuer_migration: str | None = None
    overdue_after: float | None = Field(default=None, gt=0, lt=1)

    _dur = field_validator("ttl", "renew_before", "issuer_migration")(_check_duration)
    _issuer = field_validator("issuer_ref")(_check_issuer_ref)


class CertificateConfig(CertSettings):
    role: str = Field(min_length=1)
    common_name: str
    alt_names: list[str] = []
    ip_sans: list[str] = []

    @field_validator("common_name")
    @classmethod
    def _cn(cls, value: str) -> str:
        return check_dns_name(value)

    @field_validator("alt_names")
    @classmethod
    def _alt_names(cls, value: list[str]) -> list[str]:
        for index, name in enumerate(value):
            try:
                check_dns_name(name)
            except ValueError as exc:
                raise ValueError(f"[{index}]: {exc}") from None
        return value

    @field_validator("ip_sans")
    @classmethod
    def _ip_sans(cls, value: list[str]) -> list[str]:
        for index, ip in enumerate(value):
            try:
                check_ip(ip)
            except ValueError as exc:
                raise ValueError(f"[{index}]: {exc}") from None
        return value


class DatabaseCertConfig(CertificateConfig):
    """``[clusters.databases.<name>]``: a database's own proxy (endpoint) certificate."""

    verify_endpoint: str | None = None  # host:port of the database endpoint, for the TLS check

    @field_validator("verify_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hostport(value, default_port=None)
        return value


class TrustedCaConfig(_Strict):
    """``[clusters.certificates.mtls_trusted_ca]``: a CA bundle, no role and no key."""

    pki_mount: str | None = None


# ``[clusters.certificates.mtls_trusted_ca]`` is not a certificate with a key: it is moved out of
# the ``certificates`` table before validation, under this key (which names its place in the file).
TRUSTED_CA_KEY = "certificates.mtls_trusted_ca"
MTLS_TRUSTED_CA = "mtls_trusted_ca"


class ClusterConfig(WindowSettings):
    name: str = Field(min_length=1)
    url: str
    username: str | None = None
    login: Login = "password"
    login_certificate: CertificateConfig | None = None
    trusted_ca: TrustedCaConfig | None = Field(default=None, validation_alias=TRUSTED_CA_KEY)
    password_file: str | None = None
    password_env: str | None = None
    password_vault: str | None = None
    ca_file: str | None = None
    ca_fingerprint: str | None = None
    insecure_skip_verify: bool = False
    timeout: float = Field(default=30.0, gt=0)
    install_timeout: float = Field(default=900.0, gt=0)
    internode_confirm_timeout: float = Field(default=600.0, ge=0)
    crdb_update: CrdbUpdate = "rest"
    crdb_cli_path: str = "/opt/redislabs/bin/crdb-cli"
    docker_container: str | None = None
    docker_host: str | None = None
    ocsp_responder: Literal["vault"] | None = None
    verify_endpoints: dict[str, str] = {}
    certificates: dict[str, CertificateConfig] = {}
    databases: dict[str, DatabaseCertConfig] = {}

    @model_validator(mode="before")
    @classmethod
    def _split_trusted_ca(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("certificates"), dict):
            certificates = dict(data["certificates"])
            if MTLS_TRUSTED_CA in certificates:
                data = {**data, TRUSTED_CA_KEY: certificates.pop(MTLS_TRUSTED_CA)}
                data["certificates"] = certificates
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(
                f"expected an https:// URL such as https://cluster:9443, got {value!r}"
            )
        return value.rstrip("/")

    @field_validator("ca_fingerprint")
    @classmethod
    def _fp(cls, value: str | None) -> str | None:
        if value is None:
            return None
        cleaned = value.replace(":", "").lower()
        if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
            raise ValueError("expected a SHA-256 fingerprint (64 hex digits, colons allowed)")
        return cleaned

    @field_validator("password_vault")
    @classmethod
    def _vault_ref(cls, value: str | None) -> str | None:
        if value is not None:
            VaultSecretRef.parse(value)
        return value

    @model_validator(mode="after")
    def _password_source(self) -> ClusterConfig:
        sources = {
            "password_file": self.password_file,
            "password_env": self.password_env,
            "password_vault": self.password_vault,
        }
        if self.login == "certificate":
            if self.login_certificate is None:
                raise ValueError(
                    "missing key 'login_certificate': required when login = 'certificate'"
                )
            for key in ("username", *sources):
                if getattr(self, key):
                    raise ValueError(
                        f"key {key!r} does not apply when login = 'certificate' "
                        "(the certificate names the user)"
                    )
        else:
            if self.login_certificate is not None:
                raise ValueError("key 'login_certificate' applies only when login = 'certificate'")
            if sum(1 for source in sources.values() if source) != 1:
                raise ValueError(
                    "expected exactly one of 'password_file', 'password_env' or 'password_vault'"
                )
        if self.ocsp_responder == "vault" and "proxy" not in self.certificates:
            raise ValueError(
                "key 'ocsp_responder' needs [clusters.certificates.proxy]: the responder is "
                "the one the proxy certificate names"
            )
        if self.crdb_update == "docker" and not self.docker_container:
            raise ValueError("missing key 'docker_container': required when crdb_update = 'docker'")
        return self


class AgentConfig(_Strict):
    state_dir: str = "/var/lib/vault-bridge"
    listen: str = "127.0.0.1:9109"
    log_format: LogFormat = "text"
    resync_interval: Duration = timedelta(minutes=10)
    max_issues_per_hour: int = Field(default=6, ge=1)
    replace_foreign: bool = True
    revoke_superseded: bool = True
    revoke_grace: Duration = timedelta(hours=1)
    stop_grace: Duration = timedelta(seconds=30)
    # Certificates obtained, installed and checked at the same time, across clusters and
    # within one (key generation, Vault and the clusters overlap).
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=MAX_CONCURRENCY)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            parse_hostport(value, default_port=None)
        return value


_KV_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_REPLICA_ID = re.compile(r"[A-Za-z0-9._@:-]{1,128}")
MIN_LEASE_TTL = timedelta(seconds=2)


class HaConfig(_Strict):
    """``[ha]``: replicas coordinated through Vault's KV version 2 engine."""

    backend: Literal["vault-kv"] = "vault-kv"
    kv_mount: str = "secret"
    path: str = "vault-bridge"
    lease_ttl: str = "30s"
    replica_id: str = ""

    @field_validator("kv_mount", "path")
    @classmethod
    def _kv_path(cls, value: str) -> str:
        parts = value.strip("/").split("/")
        if not value.strip("/") or any(
            not _KV_SEGMENT.fullmatch(p) or p in (".", "..") for p in parts
        ):
            raise ValueError(
                "expected a KV path of letters, digits, '.', '_' and '-' segments separated "
                f"by '/', got {value!r}"
            )
        return "/".join(parts)

    @field_validator("lease_ttl")
    @classmethod
    def _ttl(cls, value: str) -> str:
        if parse_duration(value) < MIN_LEASE_TTL:
            raise ValueError(f"expected at least 2s, got {value!r}")
        return value

    @field_validator("replica_id")
    @classmethod
    def _replica(cls, value: str) -> str:
        if value and not _REPLICA_ID.fullmatch(value):
            raise ValueError(
                f"expected up to 128 letters, digits or '.', '_', '@', ':', '-', got {value!r}"
            )
        return value

    @property
    def ttl(self) -> timedelta:
        return parse_duration(self.lease_ttl)


def default_replica_id() -> str:
    """hostname-pid: unique per process on a host, readable in ``status``."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", os.uname().nodename or "host")[:100]
    return f"{host}-{os.getpid()}"


class FileConfig(_Strict):
    vault: VaultConfig = VaultConfig()
    defaults: CertSettings = CertSettings()
    agent: AgentConfig = AgentConfig()
    ha: HaConfig | None = None
    clusters: list[ClusterConfig] = Field(min_length=1)
