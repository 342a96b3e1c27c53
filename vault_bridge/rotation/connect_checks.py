"""`validate --connect`: checks against the real Vault and clusters, before anything is issued."""

from __future__ import annotations

from vault_bridge.errors import VaultBridgeError
from vault_bridge.rotation.app import App


def connect_checks(app: App) -> list[str]:
    """Every problem found, one line each (an empty list means all is well)."""
    problems: list[str] = []
    try:
        app.vault.ensure_token()
    except VaultBridgeError as exc:
        return [f"Vault login failed: {exc}"]
    seen: set[tuple[str, str]] = set()
    for spec in app.settings.specs():
        key = (spec.pki_mount, spec.role)
        if key in seen:
            continue
        seen.add(key)
        path = f"{spec.pki_mount}/roles/{spec.role}"
        try:
            role = app.vault.read_role(spec.pki_mount, spec.role)
        except VaultBridgeError as exc:
            problems.append(f"PKI role {path}: {exc}")
            continue
        missing = [flag for flag in ("server_flag", "client_flag") if not getattr(role, flag)]
        if missing:
            problems.append(
                f"PKI role {path} has {' and '.join(missing)} false: Redis Enterprise needs "
                f"certificates with both serverAuth and clientAuth"
            )
        if spec.mode == "issue" and role.key_type not in (spec.key_type,):
            problems.append(
                f"PKI role {path} makes {role.key_type} keys but {spec.cluster}/{spec.name.value} "
                f"asks for {spec.key_type} in issue mode"
            )
    for name, client in app.clusters.items():
        try:
            client.nodes()
            if not client.can_install():
                problems.append(
                    f"cluster {name}: user {client.settings.username or '(the login certificate)'!r} may not install "
                    f"certificates (needs the admin role)"
                )
        except VaultBridgeError as exc:
            problems.append(f"cluster {name}: {exc}")
    return problems
