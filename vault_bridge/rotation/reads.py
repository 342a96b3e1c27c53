"""Reading the clusters for a pass, ``status`` and ``plan``: one read of each cluster,
classified by :mod:`vault_bridge.decisions.renewal`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import TypeVar

from vault_bridge.adapters.ports import (
    Clock,
    ClusterCertificates,
    ClusterDatabaseCertificates,
    ClusterOcsp,
    Vault,
)
from vault_bridge.config.schema import MTLS_TRUSTED_CA
from vault_bridge.config.settings import CertSpec, ClusterSettings, Settings
from vault_bridge.decisions.renewal import Action, CertStatus, classify, plan
from vault_bridge.errors import (
    VaultBridgeError,
)
from vault_bridge.models.certificates import (
    CertName,
    InstalledCertificate,
)
from vault_bridge.models.cluster import OcspStatus
from vault_bridge.models.vault import MountIssuers
from vault_bridge.rotation.databases import DatabaseCertificates
from vault_bridge.rotation.login import LoginCertificate
from vault_bridge.rotation.ocsp import read_ocsp
from vault_bridge.rotation.results import PassResult, Read
from vault_bridge.rotation.trusted_ca import (
    trusted_ca_status,
    unknown_status,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")


class Reading:
    """The reading half of :class:`~vault_bridge.rotation.executor.Rotator`: what every
    cluster serves, classified (Vault's issuers, revocation, the trusted CA, OCSP, the
    databases' own certificates), and the plan made of it."""

    settings: Settings
    vault: Vault
    clusters: Mapping[str, ClusterCertificates]
    clock: Clock
    concurrency: int
    logins: Mapping[str, LoginCertificate]
    ocsp: dict[str, OcspStatus]
    databases: DatabaseCertificates
    _issuers: dict[str, MountIssuers]
    _target_seen: dict[tuple[str, str], datetime]
    _vault_lock: AbstractContextManager[object]
    _read_lock: AbstractContextManager[object]

    def issuers(self, mount: str) -> MountIssuers:
        """Every issuer of a PKI mount with its chain (LIST <mount>/issuers, then each one's
        GET <mount>/issuer/<id>/json), read once per pass."""
        with self._vault_lock:
            if mount not in self._issuers:
                self._issuers[mount] = self.vault.mount_issuers(mount)
            return self._issuers[mount]

    def _map(self, fn: Callable[[U], T], items: Sequence[U]) -> list[T]:
        """``fn`` over ``items`` on the bounded pool, results in the order of ``items``."""
        if self.concurrency == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        workers = min(self.concurrency, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rotate") as pool:
            futures: list[Future[T]] = [pool.submit(fn, item) for item in items]
            return [f.result() for f in futures]

    def _trust_own_api_cert(self, cluster: ClusterSettings) -> None:
        """Trust the chains of every issuer of the mount for the cluster's API once we manage
        its ``api`` certificate: an intermediate or root rotation never locks us out."""
        spec = cluster.spec(CertName.API)
        if spec is not None:
            self.clusters[cluster.name].set_trust(self.issuers(spec.pki_mount).chains())

    def _migration_since(self, spec: CertSpec, mount: MountIssuers, now: datetime) -> datetime:
        target = mount.find(spec.issuer_ref) if spec.issuer_ref else mount.default
        if target is None:
            return now
        with self._vault_lock:
            return self._target_seen.setdefault((mount.mount, target.issuer_id), now)

    def _revoked(self, spec: CertSpec, installed: InstalledCertificate | None) -> bool:
        """Whether Vault positively says the installed certificate is revoked (GET
        <mount>/cert/<serial>); an unknown serial or a failed read is not proof."""
        if installed is None or installed.info.self_signed:
            return False
        try:
            answer = self.vault.certificate_revoked(spec.pki_mount, installed.info.serial)
        except VaultBridgeError as exc:
            logger.warning(
                "%s on %s: cannot check the revocation of serial %s: %s",
                spec.name.value,
                spec.cluster,
                installed.info.serial,
                exc,
            )
            return False
        return answer is True

    def trust_vault_chains(self) -> None:
        """Trust Vault's chain for every cluster whose ``api`` certificate we manage (what a
        pass does first), so that a check run before any pass reaches a rotated API."""
        for cluster in self.settings.clusters:
            try:
                self._trust_own_api_cert(cluster)
            except VaultBridgeError as exc:
                logger.debug("cluster %s: Vault chain not trusted yet: %s", cluster.name, exc)

    def statuses_for(
        self, cluster: ClusterSettings
    ) -> tuple[list[CertStatus], dict[str, InstalledCertificate]]:
        self._trust_own_api_cert(cluster)
        installed = self.clusters[cluster.name].certificates()
        now = self.clock()
        statuses = []
        for spec in cluster.certificates:
            mount = self.issuers(spec.pki_mount)
            current = installed.get(spec.name.value)
            status = classify(
                spec, current, mount, now, migration_since=self._migration_since(spec, mount, now)
            )
            if status.state in ("ok", "due") and self._revoked(spec, current):
                status = classify(spec, current, mount, now, revoked=True)
            statuses.append(status)
        if cluster.trusted_ca_mount is not None:
            statuses.append(self._trusted_ca_status(cluster, installed.get(MTLS_TRUSTED_CA)))
        ocsp = self._read_ocsp(cluster) if cluster.spec(CertName.PROXY) else None
        if ocsp is not None:
            statuses = [
                replace(s, ocsp=ocsp.cert_status) if s.name == CertName.PROXY.value else s
                for s in statuses
            ]
        return statuses, installed

    def _trusted_ca_status(
        self, cluster: ClusterSettings, installed: InstalledCertificate | None
    ) -> CertStatus:
        """The row of ``mtls_trusted_ca`` (kept by :meth:`reconcile_trusted_cas`, never an
        action of the plan's own)."""
        try:
            return trusted_ca_status(cluster, installed, self.vault, self.logins.get(cluster.name))
        except VaultBridgeError as exc:
            logger.warning("%s on %s: %s", MTLS_TRUSTED_CA, cluster.name, exc)
            return unknown_status(cluster.name)

    def _read_ocsp(self, cluster: ClusterSettings) -> OcspStatus | None:
        """What the cluster staples for its proxy certificate (None: OCSP off or unknown)."""
        client = self.clusters[cluster.name]
        status = read_ocsp(client) if isinstance(client, ClusterOcsp) else None
        if status is None:
            self.ocsp.pop(cluster.name, None)
        else:
            self.ocsp[cluster.name] = status
        return status

    def status(self) -> PassResult:
        """Classify every configured certificate (one read of each cluster, on the pool);
        clusters that fail are reported apart."""
        with self._vault_lock:
            self._issuers.clear()
        self.databases.clear()
        result = PassResult()
        names = [c.name for c in self.settings.clusters]
        for name, answer in zip(names, self._map(self._read_cluster, names), strict=True):
            if isinstance(answer, str):
                result.cluster_errors[name] = answer
            else:
                result.statuses.extend(answer[0])
        return result

    def _read_cluster(self, name: str) -> Read | str:
        """One cluster's statuses (its databases' too) and what it serves; the error text
        when it cannot be read."""
        cluster = self.settings.cluster(name)
        try:
            statuses, installed = self.statuses_for(cluster)
        except VaultBridgeError as exc:
            return str(exc)
        client = self.clusters[name]
        if cluster.databases and isinstance(client, ClusterDatabaseCertificates):
            now = self.clock()
            with self._read_lock:
                statuses = [*statuses, *self.databases.read(cluster, client, self.issuers, now)]
        return statuses, installed

    def plan(self, force: Iterable[tuple[str, str]] = ()) -> tuple[list[Action], PassResult]:
        current = self.status()
        actions = plan(
            current.statuses,
            force=force,
            replace_foreign=self.settings.agent.replace_foreign,
            now=self.clock(),
        )
        return actions, current
