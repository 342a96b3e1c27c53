"""`vault-bridge vault-setup`: create or fix the PKI roles a configuration names."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vault_bridge.adapters.vault.client import VaultClient
from vault_bridge.config.schema import Settings
from vault_bridge.decisions.policy import desired_role, role_fixes, roles_in
from vault_bridge.errors import VaultError

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
    return report
