"""Keeps a cluster's ``mtls_trusted_ca`` in step with the issuers of a Vault PKI mount.

Read the mount's issuers (``LIST <mount>/issuers``, ``GET <mount>/issuer/<id>/json``: the Vault
port's ``mount_issuers``) and what
the cluster holds, plan the bundle (:mod:`vault_bridge.decisions.trusted_ca`), install it with
the certificate endpoints (no key), read it back. Once the cluster trusts the mount's default
issuer, the login certificate follows that issuer (it is replaced before the next request).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cryptography import x509

from vault_bridge.adapters.ports import ClusterCertificates, Vault
from vault_bridge.config.schema import MTLS_TRUSTED_CA
from vault_bridge.config.settings import ClusterSettings
from vault_bridge.decisions.install import CertUpload
from vault_bridge.decisions.renewal import CertStatus
from vault_bridge.decisions.trusted_ca import TrustedCaPlan, plan_trusted_ca
from vault_bridge.errors import ClusterError, VaultError, VerificationError
from vault_bridge.models.certificates import (
    CertificateInfo,
    CertState,
    InstalledCertificate,
    fingerprint,
    load_leaf,
    split_pem_chain,
)
from vault_bridge.models.cluster import BULK_MIN_VERSION
from vault_bridge.models.vault import MountIssuers
from vault_bridge.rotation.login import LoginCertificate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrustedCaResult:
    installed: bool
    plan: TrustedCaPlan


def mount_ca_pems(issuers: MountIssuers) -> list[str]:
    """Every issuer certificate of the mount with its chain."""
    pems: list[str] = []
    for issuer in issuers.issuers:
        pems.append(issuer.certificate)
        pems.extend(issuer.ca_chain)
    if not pems:
        raise VaultError(f"{issuers.mount} has no issuer: nothing for mtls_trusted_ca to trust")
    return pems


def _digests(pem: str) -> set[str]:
    return {fingerprint(load_leaf(block)) for block in split_pem_chain(pem)}


def reconcile_trusted_ca(
    cluster: ClusterSettings,
    client: ClusterCertificates,
    vault: Vault,
    login: LoginCertificate | None,
) -> TrustedCaResult:
    """Bring ``mtls_trusted_ca`` on ``cluster`` to the mount's issuers (plus what the login
    certificate in use still needs); raises a :class:`VaultBridgeError` when it cannot."""
    mount = cluster.trusted_ca_mount
    assert mount is not None
    issuers = vault.mount_issuers(mount)  # LIST <mount>/issuers, each issuer's JSON
    pems = mount_ca_pems(issuers)
    current = client.certificates().get(MTLS_TRUSTED_CA)
    in_use = [login.held.certificate] if login is not None and login.held is not None else []
    plan = plan_trusted_ca(pems, current.pem if current else None, in_use)
    if plan.change:
        upload = CertUpload(MTLS_TRUSTED_CA, plan.bundle, None)
        _install(client, upload)
        after = client.certificates().get(MTLS_TRUSTED_CA)
        if after is None or _digests(after.pem) != _digests(plan.bundle):
            raise VerificationError(
                "the cluster reports a different mtls_trusted_ca after the install",
                cluster=cluster.name,
                certificate=MTLS_TRUSTED_CA,
            )
        logger.info(
            "installed %s on %s: %d CA certificate(s) from %s%s",
            MTLS_TRUSTED_CA,
            cluster.name,
            len(plan.pems),
            mount,
            f", {len(plan.kept)} kept for the login certificate in use" if plan.kept else "",
        )
    default = issuers.default or (issuers.issuers[0] if issuers.default_id is None else None)
    if login is not None and login.spec.pki_mount == mount and default is not None:
        chain = [x509.load_pem_x509_certificate(p.encode()) for p in default.ca_chain]
        if chain and fingerprint(chain[0]) in _digests(plan.bundle):
            login.follow_issuer(chain)
    return TrustedCaResult(plan.change, plan)


def _install(client: ClusterCertificates, upload: CertUpload) -> None:
    """Bulk ``PUT /v1/cluster/certificates`` on 7.22.2+, else (or on 404/405) ``update_cert``."""
    if client.lowest_version() >= BULK_MIN_VERSION:
        try:
            client.put_certificates([upload])
            return
        except ClusterError as exc:
            if exc.status not in (404, 405):
                raise
    client.update_cert(upload)


def trusted_ca_status(
    cluster: ClusterSettings,
    installed: InstalledCertificate | None,
    vault: Vault,
    login: LoginCertificate | None,
) -> CertStatus:
    """The ``status``/``plan`` row of ``mtls_trusted_ca``: ``ok`` when it holds what the mount
    needs, ``due`` when a pass will change it, ``missing`` when there is none yet. Its dates
    are those of the CA that expires first."""
    mount = cluster.trusted_ca_mount
    assert mount is not None
    pems = mount_ca_pems(vault.mount_issuers(mount))
    in_use = [login.held.certificate] if login is not None and login.held is not None else []
    plan = plan_trusted_ca(pems, installed.pem if installed else None, in_use)
    if installed is None:
        return _empty_status(cluster.name, "missing")
    first = min(
        (CertificateInfo.from_pem(p) for p in split_pem_chain(installed.pem)),
        key=lambda info: info.not_after,
    )
    return CertStatus(
        cluster=cluster.name,
        name=MTLS_TRUSTED_CA,
        state="due" if plan.change else "ok",
        serial=first.serial,
        issuer=first.subject,
        not_before=first.not_before,
        not_after=first.not_after,
        renew_at=None,
        fingerprint=first.fingerprint,
    )


def _empty_status(cluster: str, state: CertState) -> CertStatus:
    return CertStatus(
        cluster=cluster,
        name=MTLS_TRUSTED_CA,
        state=state,
        serial=None,
        issuer=None,
        not_before=None,
        not_after=None,
        renew_at=None,
        fingerprint=None,
    )


def unknown_status(cluster: str) -> CertStatus:
    """The row when the mount or the cluster could not be read: a pass will try again."""
    return _empty_status(cluster, "due")
