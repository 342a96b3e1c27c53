"""Least-privilege Vault policy and PKI role settings for a configuration (pure functions).

`vault-bridge policy` prints :func:`render_policy`; `vault-bridge vault-setup` compares each
role with :func:`desired_role` and writes what differs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vault_bridge.config.durations import format_duration
from vault_bridge.config.settings import CertSpec, Settings
from vault_bridge.models.vault import PkiRole


@dataclass(frozen=True)
class PolicyRule:
    path: str
    capabilities: tuple[str, ...]
    comment: str


def _login_rules(settings: Settings) -> list[PolicyRule]:
    """For each login certificate (``login = "certificate"``): its sign/issue path, then its
    role read, alternating."""
    logins = sorted(
        (c.login_certificate for c in settings.clusters if c.login_certificate is not None),
        key=lambda s: (s.pki_mount, s.mode, s.role, s.cluster),
    )
    rules = []
    for login in logins:
        users = ", ".join(
            s.cluster
            for s in logins
            if (s.pki_mount, s.mode, s.role) == (login.pki_mount, login.mode, login.role)
        )
        verb = "sign a CSR made here" if login.mode == "sign" else "issue a key and certificate"
        rules.append(
            PolicyRule(
                f"{login.pki_mount}/{login.mode}/{login.role}",
                ("update",),
                f"{verb} for the client certificate vault-bridge logs in to {users} with",
            )
        )
        rules.append(
            PolicyRule(
                f"{login.pki_mount}/roles/{login.role}",
                ("read",),
                "validate --connect checks the login role's client_flag",
            )
        )
    return rules


def policy_rules(settings: Settings) -> list[PolicyRule]:
    """Exactly the paths the agent uses for this configuration, and nothing else."""
    rules: list[PolicyRule] = []
    seen: set[str] = set()

    def add(path: str, caps: tuple[str, ...], comment: str) -> None:
        if path not in seen:
            seen.add(path)
            rules.append(PolicyRule(path, caps, comment))

    databases = [d.cert for c in settings.clusters for d in c.databases]
    specs = sorted([*settings.specs(), *databases], key=lambda s: (s.pki_mount, s.mode, s.role))
    for spec in specs:
        users = ", ".join(
            f"{s.cluster}/{s.key_name}" for s in specs if issue_path(s) == issue_path(spec)
        )
        verb = "sign a CSR made here" if spec.mode == "sign" else "issue a key and certificate"
        by = f" by issuer {spec.issuer_ref} (issuer_ref)" if spec.issuer_ref else ""
        add(issue_path(spec), ("update",), f"{verb}{by} for {users}")
    logins = _login_rules(settings)
    issuer_reads = [
        PolicyRule(
            f"{spec.pki_mount}/issuer/{spec.issuer_ref}",
            ("read",),
            "validate --connect checks that the chosen issuer exists and may issue",
        )
        for spec in specs
        if spec.issuer_ref
    ]
    for rule in [*logins[::2], *issuer_reads]:
        add(rule.path, rule.capabilities, rule.comment)
    for spec in specs:
        add(
            f"{spec.pki_mount}/roles/{spec.role}",
            ("read",),
            "validate --connect checks the role's flags before anything is issued",
        )
    for rule in logins[1::2]:
        add(rule.path, rule.capabilities, rule.comment)
    if settings.agent.revoke_superseded:
        # replaced login certificates go through the same revocation (not with [ha])
        login_mounts = (
            {c.login_certificate.pki_mount for c in settings.clusters if c.login_certificate}
            if settings.ha is None
            else set()
        )
        for mount in sorted({s.pki_mount for s in specs} | login_mounts):
            add(
                f"{mount}/revoke",
                ("update",),
                "revoke superseded certificates after the grace period ([agent] revoke_superseded)",
            )
    for cluster in settings.clusters:
        if cluster.password_vault is not None:
            add(
                cluster.password_vault.api_path,
                ("read",),
                f"the REST API password of cluster {cluster.name} (password_vault)",
            )
    if settings.ha is not None:
        base = f"{settings.ha.kv_mount}/data/{settings.ha.path}"
        add(
            f"{base}/lease/*",
            ("read", "create", "update"),
            "[ha]: replica heartbeats, cluster leases and CRDB locks (check-and-set writes)",
        )
        add(
            f"{base}/state/*",
            ("read", "create", "update"),
            "[ha]: each cluster's state and intent journal, shared by the replicas",
        )
    add("auth/token/renew-self", ("update",), "keep the agent's own token alive")
    add("auth/token/lookup-self", ("read",), "read the agent's own token TTL")
    return rules


def issue_path(spec: CertSpec) -> str:
    """Where a certificate is requested: ``<mount>/<mode>/<role>``, or
    ``<mount>/issuer/<ref>/<mode>/<role>`` with ``issuer_ref``."""
    if spec.issuer_ref:
        return f"{spec.pki_mount}/issuer/{spec.issuer_ref}/{spec.mode}/{spec.role}"
    return f"{spec.pki_mount}/{spec.mode}/{spec.role}"


def render_policy(settings: Settings, source: str = "") -> str:
    """HCL text of the policy, commented line by line."""
    where = f" for {source}" if source else ""
    lines = [
        f"# vault-bridge: least-privilege policy{where}.",
        "# <mount>/cert/ca_chain, LIST <mount>/issuers, <mount>/issuer/<id>/json and",
        "# <mount>/cert/<serial> need no policy (unauthenticated PKI paths).",
        "# Nothing under sys/, no other mount, role or secret.",
        "",
    ]
    for rule in policy_rules(settings):
        caps = ", ".join(f'"{c}"' for c in rule.capabilities)
        lines.append(f"# {rule.comment}")
        lines.append(f'path "{rule.path}" {{')
        lines.append(f"  capabilities = [{caps}]")
        lines.append("}")
        lines.append("")
    return "\n".join(lines)


def desired_role(specs: Sequence[CertSpec]) -> dict[str, Any]:
    """PKI role settings that let ``specs`` (all on one role) be issued, and no more.

    - server_flag and client_flag: Redis Enterprise needs serverAuth and clientAuth;
    - key_type "any" for sign mode (the CSR carries the key), the configured type for issue;
    - allowed_domains: exactly the configured names (globs for wildcards);
    - max_ttl: the longest configured TTL;
    - generate_lease false: a leased certificate is revoked when the token that issued it
      expires or is revoked, which would take the cluster's certificate down with the agent's
      token; vault-bridge revokes superseded certificates itself.
    """
    names: set[str] = set()
    ip = False
    for spec in specs:
        names.add(spec.common_name)
        names.update(spec.alt_names)
        ip = ip or bool(spec.ip_sans)
    modes = {s.mode for s in specs}
    key_types = {(s.key_type, s.key_bits) for s in specs}
    if modes == {"sign"} or len(key_types) > 1:
        key_type, key_bits = "any", 0
    else:
        key_type, key_bits = next(iter(key_types))
    max_ttl = max(s.ttl for s in specs)
    return {
        "server_flag": True,
        "client_flag": True,
        "key_type": key_type,
        "key_bits": key_bits,
        "allowed_domains": sorted(names),
        "allow_bare_domains": True,
        "allow_subdomains": False,
        "allow_glob_domains": any("*" in n for n in names),
        "allow_wildcard_certificates": any(n.startswith("*.") for n in names),
        "allow_localhost": "localhost" in names,
        "allow_ip_sans": ip,
        "max_ttl": format_duration(max_ttl),
        "generate_lease": False,
        "key_usage": ["DigitalSignature", "KeyEncipherment"],
    }


def role_fixes(role: PkiRole, specs: Sequence[CertSpec]) -> dict[str, Any]:
    """The settings an existing role must change so ``specs`` can be issued (empty: fine).

    Only what is needed is changed: a role an administrator made broader stays as it is.
    """
    desired = desired_role(specs)
    fixes: dict[str, Any] = {}
    for flag in ("server_flag", "client_flag"):
        if not getattr(role, flag):
            fixes[flag] = True
    if role.generate_lease:
        fixes["generate_lease"] = False
    fixes.update(_key_type_fixes(role, specs, desired))
    longest = max(s.ttl for s in specs).total_seconds()
    if role.max_ttl_seconds and role.max_ttl_seconds < longest:
        fixes["max_ttl"] = desired["max_ttl"]
    fixes.update(_name_fixes(role, specs, desired))
    if any(s.ip_sans for s in specs) and not role.allow_ip_sans:
        fixes["allow_ip_sans"] = True
    return fixes


def _key_type_fixes(
    role: PkiRole, specs: Sequence[CertSpec], desired: Mapping[str, Any]
) -> dict[str, Any]:
    """``issue`` needs the role's key type to be one asked for; ``sign`` alone needs it to
    accept every key type the CSRs carry."""
    issue_types = {s.key_type for s in specs if s.mode == "issue"}
    if issue_types:
        if role.key_type not in issue_types:
            return {"key_type": desired["key_type"], "key_bits": desired["key_bits"]}
        return {}
    if role.key_type != "any" and {s.key_type for s in specs} != {role.key_type}:
        return {"key_type": "any", "key_bits": 0}
    return {}


def _name_fixes(
    role: PkiRole, specs: Sequence[CertSpec], desired: Mapping[str, Any]
) -> dict[str, Any]:
    """The names the role must allow: the configured ones added to its own."""
    if role.allow_any_name:
        return {}
    names = [n for s in specs for n in (s.common_name, *s.alt_names)]
    if all(name_allowed(n, role) for n in names):
        return {}
    fixes: dict[str, Any] = {
        "allowed_domains": sorted({*role.allowed_domains, *desired["allowed_domains"]}),
        "allow_bare_domains": True,
    }
    for flag in ("allow_glob_domains", "allow_wildcard_certificates", "allow_localhost"):
        if desired[flag]:
            fixes[flag] = True
    return fixes


def name_allowed(name: str, role: PkiRole) -> bool:
    """Roughly Vault's own rule: a listed name, a subdomain when allowed, or a glob."""
    if name == "localhost" and role.data.get("allow_localhost", True):
        return True
    for domain in role.allowed_domains:
        if name == domain:
            return True
        if role.allow_subdomains and name.endswith("." + domain):
            return True
        if role.allow_glob_domains and fnmatch.fnmatchcase(name, domain):
            return True
    return False


def roles_in(settings: Settings) -> dict[tuple[str, str], list[CertSpec]]:
    """The specs of every (mount, role) the configuration names."""
    out: dict[tuple[str, str], list[CertSpec]] = {}
    for spec in settings.specs():
        out.setdefault((spec.pki_mount, spec.role), []).append(spec)
    return out
