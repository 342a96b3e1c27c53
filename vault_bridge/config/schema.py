"""The configuration file (TOML): its schema, its validation and the resolved settings.

pydantic validates the file; every error becomes one :class:`ConfigError` line naming the key
path and what was expected, with the nearest valid key suggested for a typo.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from vault_bridge.config.durations import parse_duration
from vault_bridge.config.limits import DEFAULT_CONCURRENCY, MAX_CONCURRENCY
from vault_bridge.config.windows import MaintenanceWindow, parse_windows
from vault_bridge.errors import ConfigError
from vault_bridge.models.certificates import CertName, KeyType, Mode

CONFIG_ENV = "VAULT_BRIDGE_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/vault-bridge/config.toml")

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


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


def _check_windows(value: str | list[str] | None) -> str | list[str] | None:
    if value is not None:
        parse_windows(value)
    return value


def _check_issuer_ref(value: str | None) -> str | None:
    if value is not None and (not value.strip() or "/" in value or value != value.strip()):
        raise ValueError(
            f"expected an issuer ID or name of the mount (no '/', no spaces), got {value!r}"
        )
    return value


class WindowSettings(_Strict):
    """Keys allowed in [defaults], in each cluster and in each certificate table."""

    maintenance_window: str | list[str] | None = None
    window_safety_margin: float | None = Field(default=None, gt=0, lt=1)

    _win = field_validator("maintenance_window")(_check_windows)


def _to_timedelta(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return parse_duration(value)


# A duration key: written as Vault writes them ("10m", "1h"), held as a timedelta once loaded,
# so nothing parses a duration from the configuration at run time.
Duration = Annotated[timedelta, BeforeValidator(_to_timedelta)]


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


# RFC 1123 labels; "_" is allowed too, as service names and some internal zones use it.
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def check_dns_name(value: str, *, wildcard: bool = True) -> str:
    """A DNS name (RFC 1123 labels; a leading ``*.`` when ``wildcard``); ValueError if not."""
    name = value[2:] if wildcard and value.startswith("*.") else value
    name = name.removesuffix(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(p) for p in name.split(".")):
        raise ValueError(f"expected a DNS name such as re-east.example.com, got {value!r}")
    return value


def check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"expected an IP address such as 10.0.0.5, got {value!r}") from None
    return value


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


# ---------------------------------------------------------------------------
# Resolved settings: what the rest of the program uses.


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
class VaultSecretRef:
    """A value in Vault's KV version 2 engine: ``<mount>/<path>#<key>``."""

    mount: str
    path: str
    key: str

    @classmethod
    def parse(cls, text: str) -> VaultSecretRef:
        location, sep, key = text.partition("#")
        mount, slash, path = location.strip("/").partition("/")
        if not sep or not key or not slash or not mount or not path:
            raise ValueError(
                f"expected '<kv-v2 mount>/<path>#<key>' such as 'secret/redis/re-east#password', "
                f"got {text!r}"
            )
        return cls(mount, path, key)

    @property
    def api_path(self) -> str:
        """The KV v2 read path: ``<mount>/data/<path>``."""
        return f"{self.mount}/data/{self.path}"


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


def parse_hostport(value: str, default_port: int | None) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"expected host:port, got {value!r}")
        return value, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port 1-65535, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fields_of(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (for suggestions)."""
    model: type[BaseModel] = FileConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part == TRUSTED_CA_KEY:
            model = TrustedCaConfig
            continue
        field = model.model_fields.get(part)
        if field is None:
            if model is ClusterConfig or part in CertName.__members__.values():
                model = CertificateConfig
                continue
            return model if issubclass(model, CertificateConfig) else None
        ann = field.annotation
        target = _unwrap_model(ann)
        if target is None:
            if part == "certificates":
                model = CertificateConfig
                continue
            if part == "databases":
                model = DatabaseCertConfig
                continue
            return None
        model = target
    return model


def _unwrap_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _one_line(error: Any) -> str:
    loc = tuple(p for p in error["loc"] if p not in ("function-after[_fields_for_method()]",))
    path = _format_loc(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc)
        hint = _suggest(str(loc[-1]), _fields_of(model)) if model else ""
        return f"{path}: unknown key{hint}"
    if kind == "missing":
        return f"{path}: missing required key"
    msg = str(error["msg"]).removeprefix("Value error, ")
    if "input" in error and kind not in ("value_error",) and not isinstance(error["input"], dict):
        return f"{path}: {msg}, got {error['input']!r}"
    return f"{path}: {msg}" if path else msg


def _read_password(cluster: ClusterConfig, where: str) -> SecretStr | None:
    # The password is kept in a SecretStr: it is never printed, logged or written anywhere.
    if cluster.login == "certificate":
        return None  # no password at all: the client certificate is the credential
    if cluster.password_vault:
        return None  # read from Vault when the cluster is first contacted
    if cluster.password_file:
        try:
            text = Path(cluster.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{where}.password_file: cannot read {cluster.password_file!r}: {exc.strerror}"
            ) from exc
        if not text:
            raise ConfigError(f"{where}.password_file: {cluster.password_file!r} is empty")
        return SecretStr(text)
    env = cluster.password_env or ""
    value = os.environ.get(env, "")
    if not value:
        raise ConfigError(f"{where}.password_env: environment variable {env!r} is not set")
    return SecretStr(value)


def _resolve_spec(
    cluster: ClusterConfig,
    name: CertName,
    cert: CertificateConfig,
    defaults: CertSettings,
    where: str,
) -> CertSpec:
    def pick(key: str, fallback: Any) -> Any:
        own = getattr(cert, key)
        if own is not None:
            return own
        if key in WindowSettings.model_fields and getattr(cluster, key) is not None:
            return getattr(cluster, key)
        default = getattr(defaults, key)
        return default if default is not None else fallback

    key_type: KeyType = pick("key_type", "rsa")
    key_bits: int = pick("key_bits", 2048 if key_type == "rsa" else 256)
    allowed_bits = {"rsa": (2048, 3072, 4096), "ec": (256, 384)}[key_type]
    if key_bits not in allowed_bits:
        raise ConfigError(
            f"{where}.key_bits: expected one of {', '.join(map(str, allowed_bits))} "
            f"for key_type {key_type!r}, got {key_bits}"
        )
    if name.internode and key_type != "rsa":
        raise ConfigError(f"{where}.key_type: {name.value} takes RSA keys only, got {key_type!r}")
    renew_at = cert.renew_at
    renew_before_s = cert.renew_before
    if renew_at is None and renew_before_s is None:
        renew_at, renew_before_s = defaults.renew_at, defaults.renew_before
    if renew_at is not None and renew_before_s is not None:
        raise ConfigError(f"{where}: set either 'renew_at' or 'renew_before', not both")
    if renew_at is None and renew_before_s is None:
        renew_at = DEFAULT_RENEW_AT
    ttl_text = pick("ttl", "720h")
    ttl = parse_duration(ttl_text)
    renew_before = parse_duration(renew_before_s) if renew_before_s else None
    if renew_before is not None and renew_before >= ttl:
        raise ConfigError(f"{where}.renew_before: expected less than ttl {ttl_text!r}")
    migration = pick("issuer_migration", None)
    return CertSpec(
        cluster=cluster.name,
        name=name,
        role=cert.role,
        common_name=cert.common_name,
        alt_names=tuple(cert.alt_names),
        ip_sans=tuple(cert.ip_sans),
        pki_mount=str(pick("pki_mount", "pki")).strip("/"),
        mode=pick("mode", "sign"),
        key_type=key_type,
        key_bits=key_bits,
        ttl=ttl,
        renew_at=renew_at,
        renew_before=renew_before,
        issuer_ref=pick("issuer_ref", None),
        issuer_migration=parse_duration(migration) if migration else None,
        maintenance_windows=parse_windows(pick("maintenance_window", [])),
        window_safety_margin=pick("window_safety_margin", DEFAULT_WINDOW_SAFETY_MARGIN),
        overdue_after=pick("overdue_after", DEFAULT_OVERDUE_AFTER),
    )


def _resolve_certificate_auth(
    cluster: ClusterConfig, defaults: CertSettings, where: str
) -> tuple[LoginSpec | None, tuple[DatabaseSpec, ...], str | None]:
    """The login certificate, the databases' own certificates and the trusted CA's mount."""
    if cluster.login == "password" and not cluster.username:
        raise ConfigError(f"{where}.username: missing required key (login = 'password')")
    login_spec: LoginSpec | None = None
    if cluster.login_certificate is not None:
        login_spec = LoginSpec.of(
            _resolve_spec(
                cluster,
                CertName.API,  # only for the shared checks: any ordinary certificate name
                cluster.login_certificate,
                defaults,
                f"{where}.login_certificate",
            )
        )
    databases = tuple(
        DatabaseSpec(
            database=name,
            cert=replace(
                _resolve_spec(cluster, CertName.PROXY, db, defaults, f"{where}.databases.{name}"),
                label=f"bdb:{name}",
            ),
            verify_endpoint=db.verify_endpoint,
        )
        for name, db in cluster.databases.items()
    )
    trusted_ca_mount: str | None = None
    if cluster.trusted_ca is not None:
        mount = cluster.trusted_ca.pki_mount or defaults.pki_mount or "pki"
        trusted_ca_mount = str(mount).strip("/")
    return login_spec, databases, trusted_ca_mount


def _resolve_ha(ha: HaConfig | None) -> HaConfig | None:
    if ha is not None and not ha.replica_id:
        return ha.model_copy(update={"replica_id": default_replica_id()})
    return ha


def _resolve(parsed: FileConfig, path: Path | None) -> Settings:
    seen: set[str] = set()
    clusters: list[ClusterSettings] = []
    names = [n.value for n in CertName]
    for index, cluster in enumerate(parsed.clusters):
        where = f"clusters[{index}]"
        if cluster.name in seen:
            raise ConfigError(f"{where}.name: duplicate cluster name {cluster.name!r}")
        seen.add(cluster.name)
        for key in cluster.verify_endpoints:
            if key not in names:
                raise ConfigError(
                    f"{where}.verify_endpoints.{key}: unknown certificate name{_suggest(key, names)}"
                )
            try:
                parse_hostport(cluster.verify_endpoints[key], default_port=None)
            except ValueError as exc:
                raise ConfigError(f"{where}.verify_endpoints.{key}: {exc}") from None
        specs = []
        for cert_name, cert in cluster.certificates.items():
            if cert_name not in names:
                raise ConfigError(
                    f"{where}.certificates.{cert_name}: unknown certificate name"
                    f"{_suggest(cert_name, names)}; expected one of {', '.join(names)}"
                )
            specs.append(
                _resolve_spec(
                    cluster,
                    CertName(cert_name),
                    cert,
                    parsed.defaults,
                    f"{where}.certificates.{cert_name}",
                )
            )
        login_spec, databases, trusted_ca_mount = _resolve_certificate_auth(
            cluster, parsed.defaults, where
        )
        if cluster.ca_file and not Path(cluster.ca_file).is_file():
            raise ConfigError(f"{where}.ca_file: no such file {cluster.ca_file!r}")
        clusters.append(
            ClusterSettings(
                name=cluster.name,
                url=cluster.url,
                username=cluster.username or "",
                password=_read_password(cluster, where),
                ca_file=cluster.ca_file,
                ca_fingerprint=cluster.ca_fingerprint,
                insecure_skip_verify=cluster.insecure_skip_verify,
                timeout=cluster.timeout,
                install_timeout=cluster.install_timeout,
                internode_confirm_timeout=cluster.internode_confirm_timeout,
                crdb_update=cluster.crdb_update,
                crdb_cli_path=cluster.crdb_cli_path,
                docker_container=cluster.docker_container,
                docker_host=cluster.docker_host,
                verify_endpoints=dict(cluster.verify_endpoints),
                certificates=tuple(specs),
                password_vault=(
                    VaultSecretRef.parse(cluster.password_vault) if cluster.password_vault else None
                ),
                login=cluster.login,
                login_certificate=login_spec,
                trusted_ca_mount=trusted_ca_mount,
                ocsp_responder=cluster.ocsp_responder,
                databases=databases,
            )
        )
    vault = parsed.vault
    address = vault.address or os.environ.get("VAULT_ADDR", "")
    if not address:
        raise ConfigError("vault.address: missing (set it or $VAULT_ADDR)")
    if not address.startswith(("https://", "http://")) or not urlsplit(address).hostname:
        raise ConfigError(f"vault.address: expected an http(s):// URL, got {address!r}")
    ca_cert = vault.ca_cert or os.environ.get("VAULT_CACERT") or None
    if ca_cert and not Path(ca_cert).is_file():
        raise ConfigError(f"vault.ca_cert: no such file {ca_cert!r}")
    namespace = vault.namespace or os.environ.get("VAULT_NAMESPACE") or None
    resolved_vault = vault.model_copy(
        update={"address": address.rstrip("/"), "ca_cert": ca_cert, "namespace": namespace}
    )
    return Settings(
        path=path,
        vault=resolved_vault,
        agent=parsed.agent,
        clusters=tuple(clusters),
        ha=_resolve_ha(parsed.ha),
    )


def parse_config(data: Mapping[str, Any], path: Path | None = None) -> Settings:
    """Validate a parsed TOML document; raise :class:`ConfigError` with one line on error."""
    try:
        parsed = FileConfig.model_validate(dict(data))
    except ValidationError as exc:
        # An unknown key explains a "missing" one next to it (a typo): report it first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = _one_line(errors[0])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{first}{more}") from None
    return _resolve(parsed, path)


def load_config(path: str | Path | None = None) -> Settings:
    """Read the configuration from ``path``, ``$VAULT_BRIDGE_CONFIG`` or the default path."""
    chosen = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    try:
        raw = chosen.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {str(chosen)!r}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{chosen}: not valid TOML: {exc}") from exc
    return parse_config(data, chosen)
