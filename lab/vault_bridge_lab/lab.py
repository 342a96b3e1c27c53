"""A loopback lab: configuration for OpenBao plus simulated clusters (demo and tests).

Secrets stay out of files: the Vault token and the cluster password reach vault_bridge through
environment variables (``VAULT_TOKEN`` and ``password_env``); only public CA certificates are
written to disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from vault_bridge_lab.openbao import PkiSetup
    from vault_bridge_lab.simulator import SimulatedCluster

ROTATED = ("cm", "api", "proxy", "syncer", "metrics_exporter")
PASSWORD_ENV = "VAULT_BRIDGE_LAB_RE_PASSWORD"
ADMIN = "admin@example.com"
ADMIN_PASSWORD = "admin-password"


class VaultServer(Protocol):
    """What a configuration needs of a lab Vault: the dev server
    (:class:`~vault_bridge_lab.openbao.OpenBaoServer`) or the Raft one
    (:class:`~vault_bridge_lab.openbao_raft.RaftOpenBaoServer`)."""

    @property
    def address(self) -> str: ...

    @property
    def ca_cert(self) -> str | None: ...


def cluster_table(
    sim: SimulatedCluster,
    ca_dir: Path,
    *,
    role: str,
    names: Sequence[str] = ROTATED,
    username: str = ADMIN,
    password_env: str = PASSWORD_ENV,
    cert_overrides: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``[[clusters]]`` entry for a simulated cluster (its current API cert trusted)."""
    ca_file = ca_dir / f"{sim.name}-api-ca.pem"
    ca_file.write_text(sim.api_ca_pem(), encoding="utf-8")
    endpoints = {n: sim.endpoint(n) for n in ("cm", "metrics_exporter", "proxy")}
    certificates = {
        name: {
            "role": role,
            "common_name": f"{name.replace('_', '-')}.{sim.name}.example.com",
            "alt_names": ["localhost"],
            "ip_sans": ["127.0.0.1"],
            **(cert_overrides or {}),
        }
        for name in names
    }
    return {
        "name": sim.name,
        "url": sim.api_url,
        "username": username,
        "password_env": password_env,
        "ca_file": str(ca_file),
        "verify_endpoints": endpoints,
        "certificates": certificates,
        **extra,
    }


def lab_config(
    vault: VaultServer,
    pki: PkiSetup,
    clusters: Sequence[dict[str, Any]],
    *,
    state_dir: Path,
    defaults: Mapping[str, Any] | None = None,
    agent: Mapping[str, Any] | None = None,
    auth: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A whole configuration document (as parsed TOML)."""
    vault_table: dict[str, Any] = {"address": vault.address}
    if vault.ca_cert:
        vault_table["ca_cert"] = vault.ca_cert
    if auth:
        vault_table["auth"] = dict(auth)
    return {
        "vault": vault_table,
        "defaults": {"pki_mount": pki.issuing_mount, **(defaults or {})},
        "agent": {"state_dir": str(state_dir), "listen": "", **(agent or {})},
        "clusters": list(clusters),
    }


def to_toml(data: Mapping[str, Any]) -> str:
    """Write a configuration document as TOML (the subset the configuration uses)."""
    lines: list[str] = []
    _table(lines, (), data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _key(path: Sequence[str]) -> str:
    return ".".join(
        p if p.replace("_", "").replace("-", "").isalnum() else json.dumps(p) for p in path
    )


def _table(lines: list[str], path: tuple[str, ...], data: Mapping[str, Any]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and not _is_aot(v)}
    for key, value in scalars.items():
        lines.append(f"{_key((key,))} = {_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{_key((*path, key))}]")
            _table(lines, (*path, key), value)
        elif _is_aot(value):
            for item in value:
                lines.append(f"\n[[{_key((*path, key))}]]")
                _table(lines, (*path, key), item)


def _is_aot(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
