"""Loading the configuration file (TOML): parse, validate and resolve into :class:`Settings`.

pydantic validates the file; every error becomes one :class:`ConfigError` line naming the key
path and what was expected, with the nearest valid key suggested for a typo.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    SecretStr,
    ValidationError,
)

from vault_bridge.config.durations import parse_duration
from vault_bridge.config.messages import _one_line
from vault_bridge.config.schema import (
    DEFAULT_OVERDUE_AFTER,
    DEFAULT_RENEW_AT,
    DEFAULT_WINDOW_SAFETY_MARGIN,
    CertificateConfig,
    CertSettings,
    ClusterConfig,
    FileConfig,
    HaConfig,
    WindowSettings,
    default_replica_id,
)
from vault_bridge.config.settings import (
    CertSpec,
    ClusterSettings,
    DatabaseSpec,
    LoginSpec,
    Settings,
)
from vault_bridge.config.validators import (
    VaultSecretRef,
    _suggest,
    parse_hostport,
)
from vault_bridge.config.windows import parse_windows
from vault_bridge.errors import ConfigError
from vault_bridge.models.certificates import CertName, KeyType

CONFIG_ENV = "VAULT_BRIDGE_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/vault-bridge/config.toml")


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
