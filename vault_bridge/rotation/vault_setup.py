"""`vault-bridge vault-setup`: create or fix the PKI roles a configuration names, and the OCSP
URL of a mount whose proxy certificates name Vault as their responder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vault_bridge.adapters.vault.client import VaultClient
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.ocsp import vault_ocsp_url
from vault_bridge.decisions.policy import desired_role, role_fixes, roles_in
from vault_bridge.errors import VaultError
from vault_bridge.models.certificates import CertName

logger = logging.getLogger(__name__)


@dataclass
class SetupReport:
    lines: list[str] = field(default_factory=list)
    changes: int = 0


def setup_roles(vault: VaultClient, settings: Settings, *, apply: bool) -> SetupReport:
    """Compare every role with what the configuration needs; write the differences."""
    report = SetupReport()
    verb = "" if apply else "would be "
    for (mount, role_name), specs in sorted(roles_in(settings).items()):
        path = f"{mount}/roles/{role_name}"
        try:
            role = vault.read_role(mount, role_name)
        except VaultError as exc:
            if exc.status != 404:
                raise
            role = None
        if role is None:
            report.changes += 1
            report.lines.append(f"{path}: {verb}created (server_flag, client_flag, names, max_ttl)")
            if apply:
                vault.write_role(mount, role_name, desired_role(specs))
            continue
        fixes = role_fixes(role, specs)
        if not fixes:
            report.lines.append(f"{path}: OK")
            continue
        report.changes += 1
        changed = ", ".join(f"{k}={v!r}" for k, v in sorted(fixes.items()))
        report.lines.append(f"{path}: {verb}updated: {changed}")
        if apply:
            vault.write_role(mount, role_name, {**role.data, **fixes})
    _setup_ocsp_urls(vault, settings, report, apply=apply)
    return report


def _setup_ocsp_urls(
    vault: VaultClient, settings: Settings, report: SetupReport, *, apply: bool
) -> None:
    """``ocsp_responder = "vault"``: the proxy's mount names its own OCSP endpoint in the
    certificates it issues (``ocsp_servers`` of ``<mount>/config/urls``)."""
    verb = "" if apply else "would be "
    mounts = sorted(
        {
            spec.pki_mount
            for cluster in settings.clusters
            if cluster.ocsp_responder == "vault"
            for spec in cluster.certificates
            if spec.name == CertName.PROXY
        }
    )
    for mount in mounts:
        path = f"{mount}/config/urls"
        urls = vault.read_urls(mount)
        wanted = vault_ocsp_url(vault.address, mount)
        servers = [str(u) for u in urls.get("ocsp_servers") or []]
        if wanted in servers:
            report.lines.append(f"{path}: OK")
            continue
        report.changes += 1
        report.lines.append(f"{path}: {verb}updated: ocsp_servers += {wanted!r}")
        if apply:
            keep = {
                k: urls.get(k) or [] for k in ("issuing_certificates", "crl_distribution_points")
            }
            vault.write_urls(mount, {**keep, "ocsp_servers": [*servers, wanted]})
