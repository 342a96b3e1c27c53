"""`validate --connect`: checks against the real Vault and clusters, before anything is issued."""

from __future__ import annotations

from vault_bridge.errors import VaultBridgeError
from vault_bridge.rotation.app import App


def default_issuer_problems(app: App) -> list[str]:
    """The default issuer of each mount used without ``issuer_ref`` holds a key (LIST
    <mount>/issuers): an issuer imported without its key cannot sign."""
    problems: list[str] = []
    mounts = sorted({s.pki_mount for s in app.settings.specs() if not s.issuer_ref})
    for mount in mounts:
        try:
            entries = app.vault.list_issuers(mount)
        except VaultBridgeError as exc:
            problems.append(f"cannot list the issuers of {mount}: {exc}")
            continue
        default = next((e for e in entries if e.is_default), None)
        if default is not None and not default.has_key:
            name = default.name or default.issuer_id
            problems.append(
                f"the default issuer {name} of {mount} has no key and cannot issue: make an "
                f"issuer with a key the default ({mount}/config/issuers) or set issuer_ref"
            )
    return problems


def issuer_problems(app: App) -> list[str]:
    """Each ``issuer_ref`` exists on its mount and may issue (GET <mount>/issuer/<ref>)."""
    problems: list[str] = default_issuer_problems(app)
    seen: set[tuple[str, str]] = set()
    for spec in app.settings.specs():
        if not spec.issuer_ref or (spec.pki_mount, spec.issuer_ref) in seen:
            continue
        seen.add((spec.pki_mount, spec.issuer_ref))
        where = f"issuer_ref {spec.issuer_ref!r} of {spec.cluster}/{spec.name.value}"
        try:
            mount = app.vault.mount_issuers(spec.pki_mount)
        except VaultBridgeError as exc:
            problems.append(f"{where}: cannot list the issuers of {spec.pki_mount}: {exc}")
            continue
        found = mount.find(spec.issuer_ref)
        if found is None:
            known = ", ".join(i.ref for i in mount.issuers) or "none"
            problems.append(f"{where}: no such issuer on {spec.pki_mount} (issuers: {known})")
            continue
        try:
            detail = app.vault.read_issuer(spec.pki_mount, spec.issuer_ref)
        except VaultBridgeError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if detail.can_issue is False:
            usage = ",".join(detail.usage or ()) or "none"
            state = "revoked" if detail.revoked else f"usage {usage}"
            problems.append(f"{where}: the issuer may not issue certificates ({state})")
    return problems


def issuer_warnings(app: App) -> list[str]:
    """Issuer health, from one status read: the issuer of the next certificate expires within
    one lifetime of it; what is installed was signed by another issuer than the next one."""
    result = app.rotator.status()
    return [f"{s.name} on {s.cluster}: {w}" for s in result.statuses for w in s.warnings]


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
    problems.extend(issuer_problems(app))
    for name, client in app.clusters.items():
        try:
            client.nodes()
            user_role = client.management_role()
            if user_role != "admin":
                what = (
                    f"has the role {user_role!r}"
                    if user_role
                    else "has a role the cluster does not tell"
                )
                problems.append(
                    f"cluster {name}: user {client.settings.username or '(the login certificate)'!r} {what} and may not "
                    f"install certificates (needs the admin role)"
                )
        except VaultBridgeError as exc:
            problems.append(f"cluster {name}: {exc}")
    return problems
