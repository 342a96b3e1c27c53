"""Installing on one cluster: the install requests, their retries and fallback, and the
verification (read-back and served leaf) afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from vault_bridge.adapters.ports import (
    ClusterCertificates,
    ClusterDatabaseCertificates,
    ClusterOcsp,
    Sleep,
    TlsProbe,
)
from vault_bridge.config.settings import ClusterSettings, Settings
from vault_bridge.decisions.install import CertUpload, InstallBatch, install_batches
from vault_bridge.errors import (
    ClusterError,
    VaultBridgeError,
    VerificationError,
)
from vault_bridge.models.certificates import (
    CertificateInfo,
    CertName,
    InstalledCertificate,
)
from vault_bridge.models.cluster import OcspStatus
from vault_bridge.models.times import iso
from vault_bridge.models.vault import MountIssuers
from vault_bridge.rotation.databases import database_install_known
from vault_bridge.rotation.hooks import (
    FollowUpWindow,
    RotationHooks,
)
from vault_bridge.rotation.ocsp import after_proxy_change
from vault_bridge.rotation.results import Change, Outcome

logger = logging.getLogger(__name__)

# How many times one install request is sent, at most, when each attempt timed out or failed
# with nothing in place on the read-back (the read-back always comes first).
INSTALL_ATTEMPTS = 3
# Between two read-backs of an internode install (the REST API may be away for minutes).
INTERNODE_POLL = 5.0


class Installing:
    """The install half of :class:`~vault_bridge.rotation.executor.Rotator`: send the install
    requests (bulk or update_cert, with the fallback and the retries after a read-back), then
    read the cluster back and check the served leaf."""

    settings: Settings
    clusters: Mapping[str, ClusterCertificates]
    hooks: RotationHooks
    ocsp: dict[str, OcspStatus]
    _hooks_lock: AbstractContextManager[object]
    _bulk_unsupported: set[str]
    _notes: dict[tuple[str, str], tuple[str, str]]
    _sleep: Sleep
    _probe: TlsProbe
    _probe_attempts: int

    if TYPE_CHECKING:

        def issuers(self, mount: str) -> MountIssuers: ...

    def report_ocsp(self, changes: Sequence[Change]) -> None:
        """After a proxy change: stapling on with Vault (``ocsp_responder``), ask the responder
        now, record and log the status. Never fails the change: it is installed."""
        for change in changes:
            if change.name != CertName.PROXY.value:
                continue
            cluster = self.settings.cluster(change.cluster)
            client = self.clusters[change.cluster]
            if not isinstance(client, ClusterOcsp):
                continue
            try:
                status = after_proxy_change(
                    cluster, client, change.issued, self.settings.vault.address or ""
                )
            except VaultBridgeError as exc:
                logger.warning("cluster %s: OCSP check after the install: %s", change.cluster, exc)
                continue
            if status is None:
                self.ocsp.pop(change.cluster, None)
            else:
                self.ocsp[change.cluster] = status

    def _install_cluster(
        self, cluster_name: str, ready: Mapping[str, Change], window: FollowUpWindow
    ) -> tuple[list[Change], list[Outcome]]:
        """Install ``ready`` on one cluster, then read it back once and check what is
        served; returns the verified changes and the failures."""
        settings = self.settings.cluster(cluster_name)
        client = self.clusters[cluster_name]
        try:
            version = client.lowest_version()
        except VaultBridgeError as exc:
            return [], [Outcome(cluster_name, n, "failed", error=str(exc)) for n in ready]
        errors = self._install(client, list(ready.values()), version)
        done = [n for n in ready if CertName(n).needs_followup and n not in errors]
        if done:
            with self._hooks_lock:
                window.installed(cluster_name, done)
        sent = [c for n, c in ready.items() if n not in errors]
        errors.update(self._verify_all(settings, client, sent))
        installed: list[Change] = []
        failed: list[Outcome] = []
        for name, change in ready.items():
            error = errors.get(name)
            if error is not None:
                logger.error("%s on %s: %s", name, cluster_name, error)
                failed.append(Outcome(cluster_name, name, "failed", error=error))
                continue
            logger.info(
                "installed %s on %s: serial %s, not_after %s",
                name,
                cluster_name,
                change.issued.serial,
                iso(change.issued.not_after),
            )
            installed.append(change)
        return installed, failed

    def _verify_all(
        self, settings: ClusterSettings, client: ClusterCertificates, sent: Sequence[Change]
    ) -> dict[str, str]:
        """One read of the cluster verifies every install sent (an internode certificate
        waits for the REST API on its own); an error by name."""
        errors: dict[str, str] = {}
        ordinary = [c for c in sent if not CertName(c.name).internode]
        served: Mapping[str, InstalledCertificate] = {}
        if ordinary:
            try:
                served = client.certificates()
            except VaultBridgeError as exc:
                errors.update({c.name: str(exc) for c in ordinary})
                ordinary = []
        for change in [*ordinary, *(c for c in sent if CertName(c.name).internode)]:
            try:
                if CertName(change.name).internode:
                    self._verify_internode(settings, client, change)
                else:
                    self._verify(settings, served, change)
            except VaultBridgeError as exc:
                errors[change.name] = str(exc)
        return errors

    def _install(
        self, client: ClusterCertificates, changes: Sequence[Change], version: tuple[int, ...]
    ) -> dict[str, str]:
        """Install ``changes``; returns an error message per certificate that failed."""
        by_name = {c.name: c for c in changes}
        errors: dict[str, str] = {}
        if client.name in self._bulk_unsupported:
            version = (0,)
        for batch in install_batches(list(by_name), version):
            batch_changes = [by_name[n] for n in batch.names]
            try:
                with self._hooks_lock:
                    self.hooks.before_install(client.name, batch_changes)
            except VaultBridgeError as exc:
                # The intent could not be recorded: this batch is not sent.
                errors.update({c.name: f"not installed: {exc}" for c in batch_changes})
                continue
            errors.update(self._send_batch(client, batch, batch_changes))
        return errors

    def _send_batch(
        self, client: ClusterCertificates, batch: InstallBatch, changes: Sequence[Change]
    ) -> dict[str, str]:
        uploads = [self._upload(c) for c in changes]
        if batch.endpoint == "bulk":
            try:
                return self._send_checked(client, uploads, bulk=True)
            except ClusterError as exc:
                if exc.status in (404, 405):
                    logger.info(
                        "cluster %s has no bulk certificate endpoint (HTTP %s); using update_cert",
                        client.name,
                        exc.status,
                    )
                    self._bulk_unsupported.add(client.name)
                elif len(uploads) > 1 and exc.status in (400, 403, 406):
                    # One bad item rejects the whole request: install one by one so the
                    # others still go in and the error names the certificate at fault.
                    return self._one_by_one(client, uploads, bulk=True)
                else:
                    return {u.name: str(exc) for u in uploads}
        return self._one_by_one(client, uploads, bulk=False)

    def _upload(self, change: Change) -> CertUpload:
        """The install item; an internode certificate carries its whole chain, root included
        (security/encryption/internode-encryption.md: the cluster builds its internode trust
        from it)."""
        if not CertName(change.name).internode:
            return CertUpload.of(change.name, change.issued)
        spec = self.settings.cluster(change.cluster).spec(change.name)
        mount_chain = self.issuers(spec.pki_mount).chains() if spec is not None else []
        return CertUpload.with_root(change.name, change.issued, mount_chain)

    def _one_by_one(
        self, client: ClusterCertificates, uploads: Sequence[CertUpload], *, bulk: bool
    ) -> dict[str, str]:
        errors: dict[str, str] = {}
        for upload in uploads:
            try:
                errors.update(self._send_checked(client, [upload], bulk=bulk))
            except ClusterError as exc:
                errors[upload.name] = str(exc)
        return errors

    def _send_checked(
        self, client: ClusterCertificates, uploads: Sequence[CertUpload], *, bulk: bool
    ) -> dict[str, str]:
        """Send one install request; after a timeout, a dropped connection, a 409 or a 5xx,
        read the certificates back and send again only what is not in place (at most
        :data:`INSTALL_ATTEMPTS` requests). Returns an error per certificate not in place;
        a request the cluster refused outright is raised."""
        pending = list(uploads)
        last: ClusterError | None = None
        for attempt in range(INSTALL_ATTEMPTS):
            try:
                if bulk:
                    client.put_certificates(pending)
                else:
                    client.update_cert(pending[0])
                return {}
            except ClusterError as exc:
                if not exc.retryable:
                    raise
                last = exc
            # An install that timed out may still be applying: give it the backoff first.
            self._sleep(client.backoff * (2**attempt))
            try:
                installed = client.certificates()
            except VaultBridgeError as exc:
                # Cannot tell whether it went in: never send it blind; the journal keeps the
                # intent and the next pass reads it back.
                return {u.name: f"{last}; the read-back failed too: {exc}" for u in pending}
            in_place = [u for u in pending if _is_installed(installed, u)]
            for upload in in_place:
                if last.status == 409:
                    why = "HTTP 409, not all nodes have been updated; the cluster reports it"
                    self._notes[(client.name, upload.name)] = ("partial", why)
                logger.warning(
                    "%s on %s: %s, but the read-back shows it installed",
                    upload.name,
                    client.name,
                    last.message,
                )
            pending = [u for u in pending if u not in in_place]
            if not pending:
                return {}
            if attempt < INSTALL_ATTEMPTS - 1:
                logger.warning(
                    "%s on %s: %s and not in place; sending again (%d/%d)",
                    ", ".join(u.name for u in pending),
                    client.name,
                    last.message,
                    attempt + 2,
                    INSTALL_ATTEMPTS,
                )
        return {u.name: str(last) for u in pending}

    def _verify(
        self,
        settings: ClusterSettings,
        served: Mapping[str, InstalledCertificate],
        change: Change,
    ) -> None:
        """Compare the read-back ``served`` with the install, then check the served leaf."""
        expected = change.issued.info.fingerprint
        installed = served.get(change.name)
        if installed is None or installed.info.fingerprint != expected:
            raise VerificationError(
                "the cluster reports a different certificate after the install",
                cluster=settings.name,
                certificate=change.name,
            )
        endpoint = settings.endpoint_for(CertName(change.name))
        if endpoint is None:
            return
        leaf: CertificateInfo | None = None
        for attempt in range(self._probe_attempts):
            try:
                leaf = self._probe(endpoint)
            except VerificationError:
                leaf = None
            if leaf is not None and leaf.fingerprint == expected:
                return
            if attempt < self._probe_attempts - 1:
                self._sleep(0.2 * (attempt + 1))
        what = f"serial {leaf.serial}" if leaf else "nothing"
        raise VerificationError(
            f"{endpoint} serves {what}, not the new certificate {change.issued.serial}",
            cluster=settings.name,
            certificate=change.name,
        )

    def database_install_known(self, cluster: str, name: str, fingerprint: str) -> bool | None:
        """Whether the interrupted install of a database's own certificate (``bdb:<name>``)
        happened: True, False on positive proof only, None when it cannot be told."""
        client = self.clusters.get(cluster)
        if not isinstance(client, ClusterDatabaseCertificates):
            return None
        return database_install_known(
            self.settings.cluster(cluster), client, name, fingerprint, self._probe
        )

    def served_elsewhere(self, cluster: str, name: str, fingerprint: str) -> bool:
        """Positive proof that the certificate ``fingerprint`` is not served for ``name``: the
        TLS probe of its listener answers another certificate, or ``name`` has no listener.
        A probe that fails (nothing answers, a handshake error) proves nothing."""
        endpoint = self.settings.cluster(cluster).endpoint_for(CertName(name))
        if endpoint is None:
            return True
        try:
            served = self._probe(endpoint)
        except VaultBridgeError as exc:
            logger.warning("%s on %s: %s serves nothing readable: %s", name, cluster, endpoint, exc)
            return False
        return served.fingerprint != fingerprint

    def _verify_internode(
        self, settings: ClusterSettings, client: ClusterCertificates, change: Change
    ) -> None:
        """After an internode change the REST API may stay away for minutes (release notes
        RS208996): read back until ``internode_confirm_timeout``; while it cannot answer, the
        outcome is "installed, not yet confirmed", never a failure. A read-back that shows
        another certificate is a failure."""
        waited = 0.0
        while True:
            try:
                installed = client.certificates().get(change.name)
            except ClusterError as exc:
                if not exc.retryable:
                    raise
                if waited >= settings.internode_confirm_timeout:
                    why = (
                        f"the REST API did not answer for {waited:g}s after the install "
                        f"({exc.message}); the next pass reads it back"
                    )
                    self._notes[(settings.name, change.name)] = ("unconfirmed", why)
                    logger.warning(
                        "%s on %s: installed, not yet confirmed: %s",
                        change.name,
                        settings.name,
                        why,
                    )
                    return
                self._sleep(INTERNODE_POLL)
                waited += INTERNODE_POLL
                continue
            if installed is None or installed.info.fingerprint != change.issued.info.fingerprint:
                raise VerificationError(
                    "the cluster reports a different certificate after the install",
                    cluster=settings.name,
                    certificate=change.name,
                )
            return


def _is_installed(installed: Mapping[str, InstalledCertificate], upload: CertUpload) -> bool:
    """The read-back holds exactly the leaf of ``upload``."""
    current = installed.get(upload.name)
    if current is None:
        return False
    try:
        return current.info.fingerprint == CertificateInfo.from_pem(upload.certificate).fingerprint
    except VaultBridgeError:
        return False
