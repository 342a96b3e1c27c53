"""OCSP after a proxy change: check the new certificate before the install when stapling is
on, turn stapling on with Vault as responder (``ocsp_responder = "vault"``), then ask the
responder at once (``POST /v1/ocsp/test``) and report what the cluster will staple."""

from __future__ import annotations

import logging

from vault_bridge.adapters.ports import ClusterOcsp
from vault_bridge.config.settings import ClusterSettings
from vault_bridge.decisions.ocsp import ocsp_urls, refuse_proxy, vault_ocsp_url
from vault_bridge.errors import CertificateError, VaultBridgeError
from vault_bridge.models.certificates import CertName, IssuedCertificate
from vault_bridge.models.cluster import OcspStatus

logger = logging.getLogger(__name__)


def expected_responder(cluster: ClusterSettings, vault_address: str) -> str | None:
    """Vault's OCSP endpoint for the proxy's mount, with ``ocsp_responder = "vault"``."""
    spec = cluster.spec(CertName.PROXY)
    if cluster.ocsp_responder != "vault" or spec is None:
        return None
    return vault_ocsp_url(vault_address, spec.pki_mount)


def read_ocsp(client: ClusterOcsp) -> OcspStatus | None:
    """What the cluster staples for its proxy certificate now (None: OCSP off, absent, or
    not readable; a failure here never fails a pass)."""
    try:
        config = client.ocsp()
        if config is None or not config.enabled:
            return None
        return client.ocsp_status()
    except VaultBridgeError as exc:
        logger.warning("cluster %s: cannot read the OCSP status: %s", client.name, exc)
        return None


def check_proxy_before_install(client: ClusterOcsp, issued: IssuedCertificate) -> None:
    """Refuse a proxy certificate that would be stapled UNKNOWN (stapling on, no responder)."""
    config = client.last_ocsp()
    reason = refuse_proxy(issued.certificate, stapling_on=bool(config and config.enabled))
    if reason is not None:
        raise CertificateError(reason, cluster=client.name, certificate=CertName.PROXY.value)


def after_proxy_change(
    cluster: ClusterSettings,
    client: ClusterOcsp,
    issued: IssuedCertificate,
    vault_address: str,
) -> OcspStatus | None:
    """The OCSP status of the new proxy certificate (None: the cluster has no OCSP or it is
    off); raises a :class:`VaultBridgeError` when the cluster cannot be asked."""
    config = client.last_ocsp()
    if config is None:
        return None
    expected = expected_responder(cluster, vault_address)
    names = ocsp_urls(issued.certificate)
    if expected is not None and expected not in names:
        logger.warning(
            "cluster %s: the proxy certificate names OCSP responder(s) %s, not Vault's %s: add "
            "it to ocsp_servers of the mount's config/urls (vault-setup does)",
            cluster.name,
            ", ".join(names) or "none",
            expected,
        )
    if not config.enabled:
        if expected is None or expected not in names:
            return None
        config = client.enable_ocsp()
        logger.info("cluster %s: OCSP stapling turned on, responder %s", cluster.name, expected)
    status = client.ocsp_test()
    level = logging.INFO if status.cert_status == "GOOD" else logging.ERROR
    logger.log(
        level,
        "cluster %s: OCSP status of proxy serial %s is %s (responder %s)%s",
        cluster.name,
        issued.serial,
        status.cert_status,
        status.responder_url or config.responder_url or "none",
        "" if status.cert_status == "GOOD" else ": clients checking the staple will refuse it",
    )
    return status
