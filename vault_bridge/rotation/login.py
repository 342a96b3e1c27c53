"""The client certificate vault_bridge logs in to a cluster with (``login = "certificate"``).

It is issued from Vault on first use (never written to disk, never logged), renewed before
every REST request that finds it due (so no request ever goes out with an expired one), and
replaced when the PKI mount's default issuer moves, once the cluster trusts the new issuer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from vault_bridge.adapters.ports import Vault
from vault_bridge.config.settings import LoginSpec
from vault_bridge.decisions.login import login_renewal_time, login_replacement
from vault_bridge.errors import VaultBridgeError
from vault_bridge.models.certificates import CertName, IssuedCertificate, KeyType, Mode
from vault_bridge.rotation.keys import build_csr, check_before_install, generate_key, key_to_pem

logger = logging.getLogger(__name__)

# After a failed renewal while the held certificate is valid, the next attempt waits this long.
RETRY_AFTER = timedelta(seconds=30)


@dataclass(frozen=True)
class ReplacedLogin:
    """A login certificate this process presented and no longer does (public parts only)."""

    serial: str
    not_after: datetime
    pem: str  # the leaf, to revoke by PEM when the role keeps no copy


class LoginCertificate:
    """The login certificate of one cluster; :meth:`current` is the cluster client's source."""

    def __init__(self, spec: LoginSpec, vault: Vault, *, clock: Callable[[], datetime]) -> None:
        self.spec = spec
        self._vault = vault
        self._clock = clock
        self._lock = threading.Lock()
        self._issued: IssuedCertificate | None = None
        self._default_issuer: list[x509.Certificate] | None = None
        self._retry_at: datetime | None = None  # after a failed renewal, while one is valid
        self._replaced: list[ReplacedLogin] = []
        self.issued_count = 0

    def take_replaced(self) -> list[ReplacedLogin]:
        """The certificates replaced since the last call (no request presents them any more:
        the agent queues them for revocation after ``revoke_grace``)."""
        with self._lock:
            replaced, self._replaced = self._replaced, []
            return replaced

    @property
    def held(self) -> IssuedCertificate | None:
        """The certificate held now (None before the first request)."""
        return self._issued

    @property
    def renew_at(self) -> datetime | None:
        issued = self._issued
        return login_renewal_time(self.spec, issued.info) if issued else None

    @property
    def next_attempt(self) -> datetime | None:
        """When the agent should renew it (its renewal time, or the retry after a failure)."""
        at = self.renew_at
        if at is None:
            return None
        return max(at, self._retry_at) if self._retry_at else at

    def follow_issuer(self, default_issuer: list[x509.Certificate]) -> None:
        """The mount's default issuer (its chain) is trusted by the cluster now: a login
        certificate from another issuer is replaced before the next request."""
        with self._lock:
            self._default_issuer = default_issuer

    def current(self) -> IssuedCertificate:
        """The certificate to present now, renewed first when it is due.

        When Vault fails while the held certificate is still valid, the held one is used
        (and the renewal tried again at the next request); without one, the error is raised.
        """
        with self._lock:
            now = self._clock()
            held = self._issued
            reason = login_replacement(
                self.spec,
                held.certificate if held else None,
                now=now,
                default_issuer=self._default_issuer,
            )
            if reason is None:
                assert held is not None
                return held
            if (
                held is not None
                and held.not_after > now
                and self._retry_at
                and now < self._retry_at
            ):
                return held  # the last renewal failed a moment ago: the valid one goes on
            try:
                issued = self._issue()
            except VaultBridgeError as exc:
                self._retry_at = now + RETRY_AFTER
                if held is not None and held.not_after > now:
                    logger.warning(
                        "cluster %s: renewing the login certificate failed (%s); the current "
                        "one (serial %s) is valid until %s",
                        self.spec.cluster,
                        exc,
                        held.serial,
                        held.not_after.isoformat(),
                    )
                    return held
                raise
            if held is not None:
                self._replaced.append(ReplacedLogin(held.serial, held.not_after, held.certificate))
            self._issued = issued
            self._default_issuer = None
            self._retry_at = None
            self.issued_count += 1
            logger.info(
                "cluster %s: issued a login certificate (%s): serial %s, not_after %s",
                self.spec.cluster,
                reason,
                issued.serial,
                issued.not_after.isoformat(),
            )
            return issued

    def _issue(self) -> IssuedCertificate:
        spec = self.spec
        return issue_from_vault(
            self._vault,
            pki_mount=spec.pki_mount,
            role=spec.role,
            mode=spec.mode,
            key_type=spec.key_type,
            key_bits=spec.key_bits,
            common_name=spec.common_name,
            alt_names=spec.alt_names,
            ip_sans=spec.ip_sans,
            ttl=spec.ttl,
            now=self._clock,
            client_only=True,
        )


def issue_from_vault(
    vault: Vault,
    *,
    pki_mount: str,
    role: str,
    mode: Mode,
    key_type: KeyType,
    key_bits: int,
    common_name: str,
    alt_names: tuple[str, ...],
    ip_sans: tuple[str, ...],
    ttl: timedelta,
    now: Callable[[], datetime],
    client_only: bool = False,
    on_issued: Callable[[IssuedCertificate], None] | None = None,
) -> IssuedCertificate:
    """A certificate from ``<mount>/sign/<role>`` (key made here) or ``<mount>/issue/<role>``,
    with the checks of a certificate before install (lifetime left, EKUs, key match).
    ``on_issued``: called as soon as Vault issued it, before the checks (the journal)."""
    vault.ensure_token()
    if mode == "sign":
        key = generate_key(key_type, key_bits)
        csr = build_csr(key, common_name, alt_names, ip_sans)
        data = vault.sign(
            pki_mount,
            role,
            csr,
            common_name=common_name,
            alt_names=alt_names,
            ip_sans=ip_sans,
            ttl=ttl,
        )
        issued = IssuedCertificate.from_vault(data, private_key=key_to_pem(key))
    else:
        issued = vault.issue(
            pki_mount,
            role,
            common_name=common_name,
            alt_names=alt_names,
            ip_sans=ip_sans,
            ttl=ttl,
        )
    if on_issued is not None:
        on_issued(issued)
    check_before_install(
        issued,
        CertName.API,  # any ordinary name: the internode rules do not apply
        now=now(),
        requested_ttl=ttl,
        client_only=client_only,
    )
    return issued
