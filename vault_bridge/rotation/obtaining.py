"""Obtaining a certificate from Vault: key and CSR (sign mode) or issue, then the checks that
never let one unfit to install through.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager

from vault_bridge.adapters.ports import (
    Clock,
    ClusterCertificates,
    ClusterOcsp,
    Vault,
)
from vault_bridge.config.settings import CertSpec, Settings
from vault_bridge.decisions.renewal import Action
from vault_bridge.errors import (
    DeferredError,
    VaultBridgeError,
)
from vault_bridge.models.certificates import (
    CertName,
    IssuedCertificate,
)
from vault_bridge.models.times import iso
from vault_bridge.rotation.hooks import (
    RotationHooks,
)
from vault_bridge.rotation.keys import build_csr, check_before_install, generate_key, key_to_pem
from vault_bridge.rotation.ocsp import check_proxy_before_install
from vault_bridge.rotation.results import Outcome
from vault_bridge.rotation.throttle import VaultThrottle

logger = logging.getLogger(__name__)


class Obtaining:
    """The obtaining half of :class:`~vault_bridge.rotation.executor.Rotator`: key, CSR,
    Vault, and the checks before a certificate may be installed."""

    settings: Settings
    vault: Vault
    clusters: Mapping[str, ClusterCertificates]
    clock: Clock
    hooks: RotationHooks
    throttle: VaultThrottle
    _hooks_lock: AbstractContextManager[object]
    _vault_lock: AbstractContextManager[object]

    def obtain(self, spec: CertSpec, *, explicit: bool = False) -> IssuedCertificate:
        """Get a new certificate from Vault and check it; never returns one unfit to install.
        ``explicit``: the operator asked for it (``issue``), past the runaway guard too.

        Safe to call from several threads: the hooks and the token upkeep run one at a time,
        the Vault requests within :attr:`throttle`."""
        with self._hooks_lock:
            if explicit:
                self.hooks.before_issue(spec, explicit=True)
            else:
                self.hooks.before_issue(spec)
        with self._vault_lock:
            self.vault.ensure_token()
        key = None
        what = f"{spec.name.value} on {spec.cluster}"
        if spec.mode == "sign":
            key = generate_key(spec.key_type, spec.key_bits)
            csr = build_csr(key, spec.common_name, spec.alt_names, spec.ip_sans)
            data = self.throttle.call(
                what,
                lambda: self.vault.sign(
                    spec.pki_mount,
                    spec.role,
                    csr,
                    common_name=spec.common_name,
                    alt_names=spec.alt_names,
                    ip_sans=spec.ip_sans,
                    ttl=spec.ttl,
                    issuer_ref=spec.issuer_ref,
                ),
            )
            issued = IssuedCertificate.from_vault(data, private_key=key_to_pem(key))
        else:
            issued = self.throttle.call(
                what,
                lambda: self.vault.issue(
                    spec.pki_mount,
                    spec.role,
                    common_name=spec.common_name,
                    alt_names=spec.alt_names,
                    ip_sans=spec.ip_sans,
                    ttl=spec.ttl,
                    issuer_ref=spec.issuer_ref,
                ),
            )
        with self._hooks_lock:
            self.hooks.issued(spec, issued)
        # A key made here is compared with the certificate as it is; one from Vault is checked.
        check_before_install(issued, spec.name, now=self.clock(), requested_ttl=spec.ttl, key=key)
        logger.info(
            "issued %s for %s: serial %s, not_after %s",
            spec.name.value,
            spec.cluster,
            issued.serial,
            iso(issued.not_after),
        )
        return issued

    def _obtain_one(self, action: Action) -> IssuedCertificate | Outcome:
        spec = self.settings.cluster(action.cluster).spec(action.name)
        assert spec is not None
        client = self.clusters[action.cluster]
        try:
            issued = self.obtain(spec, explicit=action.reason == "forced")
            if action.name == CertName.PROXY.value and isinstance(client, ClusterOcsp):
                check_proxy_before_install(client, issued)
            return issued
        except DeferredError as exc:
            logger.info("%s on %s: deferred: %s", action.name, action.cluster, exc)
            return Outcome(action.cluster, action.name, "failed", error=str(exc))
        except VaultBridgeError as exc:
            logger.error("%s on %s: %s", action.name, action.cluster, exc)
            return Outcome(action.cluster, action.name, "failed", error=str(exc))
