"""`validate --connect`, the cluster side of logging in and of key types: which login each
cluster accepts (Basic, client certificate), and, before anything is issued, EC keys that a
Redis Enterprise 8.2 cluster with RSA-only ciphers would refuse at upload."""

from __future__ import annotations

from dataclasses import dataclass, field

from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.config.settings import ClusterSettings
from vault_bridge.decisions.ciphers import CIPHER_SETTING, ECDSA_REFUSED_FROM, allows_ecdsa
from vault_bridge.errors import VaultBridgeError
from vault_bridge.models.cluster import ClusterAccess
from vault_bridge.rotation.app import App


@dataclass
class AccessReport:
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def accepted_logins(access: ClusterAccess) -> list[str]:
    logins = []
    if access.basic_authentication:
        logins.append("password (Basic)")
    if access.mtls_certificate_authentication:
        logins.append("client certificate (mTLS)")
    return logins


def cipher_problems(
    cluster: ClusterSettings, access: ClusterAccess, version: tuple[int, ...]
) -> list[str]:
    """EC certificates the cluster's cipher settings make it refuse (8.2+)."""
    if version < ECDSA_REFUSED_FROM:
        return []
    problems = []
    for spec in cluster.certificates:
        setting = CIPHER_SETTING.get(spec.name)
        if setting is None or spec.key_type != "ec":
            continue
        if allows_ecdsa(getattr(access, setting)) is False:
            problems.append(
                f"cluster {cluster.name}: {spec.name.value} is configured with an EC key, but "
                f"the cluster's {setting} enables RSA ciphers only: Redis Enterprise 8.2 refuses "
                f'such a certificate at upload (set key_type = "rsa", or enable ECDSA ciphers)'
            )
    return problems


def _one(cluster: ClusterSettings, client: ClusterClient, report: AccessReport) -> None:
    access = client.access()
    accepted = ", ".join(accepted_logins(access)) or "neither password nor client certificate"
    if cluster.login == "certificate":
        held = client.login_certificate
        used = f"client certificate {held.info.subject}" if held else "client certificate"
    else:
        used = f"password of {cluster.username}"
    report.notes.append(f"cluster {cluster.name}: logged in with {used}; it accepts {accepted}")
    if cluster.login == "password" and not access.basic_authentication:
        report.problems.append(
            f"cluster {cluster.name}: Basic authentication is turned off "
            f'(control_plane_basic_authentication): set login = "certificate"'
        )
    report.problems.extend(cipher_problems(cluster, access, client.lowest_version()))


def access_report(app: App) -> AccessReport:
    """Notes and problems for every cluster that answers (reachability is checked apart)."""
    report = AccessReport()
    for login in app.logins.values():
        path = f"{login.spec.pki_mount}/roles/{login.spec.role}"
        try:
            role = app.vault.read_role(login.spec.pki_mount, login.spec.role)
        except VaultBridgeError as exc:
            report.problems.append(f"PKI role {path} (login certificate): {exc}")
            continue
        if not role.client_flag:
            report.problems.append(
                f"PKI role {path} has client_flag false: the login certificate of cluster "
                f"{login.spec.cluster} needs clientAuth"
            )
    for cluster in app.settings.clusters:
        try:
            _one(cluster, app.clusters[cluster.name], report)
        except VaultBridgeError:
            continue  # connect_checks names what is wrong with reaching the cluster
    return report
