"""Pure: when the client certificate vault_bridge logs in with must be replaced.

A login certificate (``login = "certificate"``) is replaced when none is held yet, at its
renewal time (the same rule as the cluster certificates: ``renew_at`` or ``renew_before``,
minus the stable jitter), once expired, or when the PKI mount's default issuer no longer
signed it (the mount's CA moved: the next certificate comes from the new issuer, which the
cluster's ``mtls_trusted_ca`` trusts by then).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from vault_bridge.config.schema import DEFAULT_RENEW_AT
from vault_bridge.config.settings import LoginSpec
from vault_bridge.decisions.renewal import issued_by, jitter
from vault_bridge.models.certificates import CertificateInfo

LOGIN_NAME = "login_certificate"


def login_renewal_time(spec: LoginSpec, info: CertificateInfo) -> datetime:
    """When the login certificate is due: as :func:`vault_bridge.decisions.renewal.renewal_time`."""
    lifetime = info.not_after - info.not_before
    if spec.renew_before is not None:
        base = info.not_after - spec.renew_before
    else:
        base = info.not_before + lifetime * (spec.renew_at or DEFAULT_RENEW_AT)
    return base - jitter(spec.cluster, LOGIN_NAME, info.serial, lifetime)


def login_replacement(
    spec: LoginSpec,
    current_pem: str | None,
    *,
    now: datetime,
    default_issuer: Sequence[x509.Certificate] | None = None,
) -> str | None:
    """Why the login certificate must be replaced now (``None``: keep it).

    ``default_issuer``: the mount's default issuer (its ``ca_chain``) when the caller knows the
    mount's CA moved; a certificate that issuer did not sign is replaced.
    """
    if current_pem is None:
        return "none held"
    info = CertificateInfo.from_pem(current_pem)
    if info.not_after <= now:
        return "expired"
    if now >= login_renewal_time(spec, info):
        return "due"
    if default_issuer is not None and not issued_by(current_pem, default_issuer[:1]):
        return "the mount's default issuer changed"
    return None
