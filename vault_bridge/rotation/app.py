"""Wiring: builds the adapters and the executor from the settings (no decisions here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from vault_bridge.adapters.ports import Vault
from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.adapters.vault.client import (
    AppRoleAuth,
    AuthMethod,
    CertAuth,
    KubernetesAuth,
    TokenAuth,
    VaultClient,
)
from vault_bridge.config.settings import ClusterSettings, Settings
from vault_bridge.models.times import utc_now
from vault_bridge.models.vault import DEFAULT_K8S_JWT
from vault_bridge.rotation.executor import Rotator
from vault_bridge.rotation.hooks import FollowUpRunner, RotationHooks
from vault_bridge.rotation.login import LoginCertificate


def auth_from_settings(settings: Settings) -> AuthMethod:
    auth = settings.vault.auth
    if auth.method == "approle":
        assert auth.role_id and auth.secret_id_file
        return AppRoleAuth(auth.role_id, Path(auth.secret_id_file), auth.mount or "approle")
    if auth.method == "kubernetes":
        assert auth.role
        return KubernetesAuth(
            auth.role,
            Path(auth.jwt_file or DEFAULT_K8S_JWT),
            auth.mount or "kubernetes",
        )
    if auth.method == "cert":
        assert auth.cert_file and auth.key_file
        return CertAuth(
            Path(auth.cert_file), Path(auth.key_file), auth.name or "", auth.mount or "cert"
        )
    return TokenAuth(Path(auth.token_file) if auth.token_file else None)


def _vault_password(vault: VaultClient, cluster: ClusterSettings) -> Callable[[], str] | None:
    """Reads the cluster's password from Vault's KV engine when it is kept there."""
    ref = cluster.password_vault
    if ref is None:
        return None
    return lambda: vault.read_kv(ref.mount, ref.path, ref.key)


def vault_client(settings: Settings, clock: Callable[[], datetime] = utc_now) -> VaultClient:
    vault = settings.vault
    assert vault.address
    return VaultClient(
        vault.address,
        auth=auth_from_settings(settings),
        ca_cert=vault.ca_cert,
        namespace=vault.namespace,
        timeout=vault.timeout,
        clock=clock,
    )


class AppPorts(Protocol):
    """What the agent's passes, revocation and the one-shot pass use of :class:`App`: the
    executor, and Vault through its port (token upkeep, revocation)."""

    @property
    def rotator(self) -> Rotator: ...

    @property
    def vault(self) -> Vault: ...


@dataclass
class App:
    settings: Settings
    vault: VaultClient
    clusters: dict[str, ClusterClient]
    rotator: Rotator
    logins: dict[str, LoginCertificate] = field(default_factory=dict)

    def close(self) -> None:
        for client in self.clusters.values():
            client.close()
        self.vault.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utc_now,
    hooks: RotationHooks | None = None,
    sleep: Callable[[float], None] | None = None,
    followups: FollowUpRunner | None = None,
    rotator_cls: type[Rotator] = Rotator,
    read_only: bool = False,
) -> App:
    """The adapters and the executor for ``settings``.

    ``hooks`` is the agent's state journal; ``rotator_cls`` lets the agent use a subclass
    of :class:`Rotator`; ``read_only`` (``status``, ``plan``, ``validate``) leaves the
    follow-ups out, and with them the modules they need.
    """
    import time

    real_sleep = sleep or time.sleep
    vault = vault_client(settings, clock)
    logins = {
        c.name: LoginCertificate(c.login_certificate, vault, clock=clock)
        for c in settings.clusters
        if c.login == "certificate" and c.login_certificate is not None
    }
    clusters = {
        c.name: ClusterClient(
            c,
            sleep=real_sleep,
            password=_vault_password(vault, c),
            client_certificate=logins[c.name].current if c.name in logins else None,
        )
        for c in settings.clusters
    }
    if not read_only:
        followups = _bind_followups(settings, clusters, followups)
    rotator = rotator_cls(
        settings,
        vault,
        clusters,
        clock=clock,
        hooks=hooks,
        followups=followups,
        sleep=real_sleep,
    )
    rotator.logins = logins
    return App(settings, vault, clusters, rotator, logins)


def _bind_followups(
    settings: Settings, clusters: dict[str, ClusterClient], followups: FollowUpRunner | None
) -> FollowUpRunner:
    """The Active-Active / Replica Of follow-ups, on the same cluster clients as the executor
    (they trust what it trusts). Their task polling waits in real time, whatever ``sleep``."""
    from vault_bridge.rotation.followups import FollowUps

    if followups is None:
        return FollowUps(settings, clusters)
    if isinstance(followups, FollowUps):
        followups.bind(clusters)
    return followups
