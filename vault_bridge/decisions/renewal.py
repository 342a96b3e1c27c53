"""Pure decisions: which certificate is in which state, when it is due, what a pass must do.

Nothing here performs I/O or reads the clock: the installed certificates, our issuers and
``now`` are passed in, so the same inputs always give the same plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from vault_bridge.config.schema import DEFAULT_RENEW_AT, CertSpec
from vault_bridge.models.certificates import (
    CertificateInfo,
    CertState,
    InstalledCertificate,
    load_leaf,
)
from vault_bridge.models.times import iso_or_none

JITTER_FRACTION = 0.05


@dataclass(frozen=True)
class CertStatus:
    """One certificate of one cluster as the planner sees it."""

    cluster: str
    name: str
    state: CertState
    serial: str | None
    issuer: str | None
    not_before: datetime | None
    not_after: datetime | None
    renew_at: datetime | None
    fingerprint: str | None
    ocsp: str | None = None  # proxy with OCSP stapling on: GOOD, REVOKED or UNKNOWN

    def as_json(self) -> dict[str, str | None]:
        out = {
            "cluster": self.cluster,
            "name": self.name,
            "serial": self.serial,
            "issuer": self.issuer,
            "not_after": iso_or_none(self.not_after),
            "renew_at": iso_or_none(self.renew_at),
            "state": self.state,
        }
        if self.ocsp is not None:
            out["ocsp"] = self.ocsp
        return out


@dataclass(frozen=True)
class Action:
    """Issue and install ``name`` on ``cluster``, and why."""

    cluster: str
    name: str
    reason: str


def jitter(cluster: str, name: str, serial: str, lifetime: timedelta) -> timedelta:
    """A stable per-certificate offset in [0, 5%] of the lifetime (the same after a restart)."""
    digest = hashlib.sha256(f"{cluster}/{name}/{serial}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return lifetime * (JITTER_FRACTION * fraction)


def renewal_time(spec: CertSpec, info: CertificateInfo) -> datetime:
    """When a certificate of ours is due: ``not_before + renew_at * lifetime`` (or
    ``not_after - renew_before``) minus its jitter."""
    lifetime = info.not_after - info.not_before
    if spec.renew_before is not None:
        base = info.not_after - spec.renew_before
    else:
        base = info.not_before + lifetime * (spec.renew_at or DEFAULT_RENEW_AT)
    return base - jitter(spec.cluster, spec.name.value, info.serial, lifetime)


def issued_by(cert_pem: str, issuers: Sequence[x509.Certificate]) -> bool:
    """True when the leaf of ``cert_pem`` was signed directly by one of ``issuers``."""
    leaf = load_leaf(cert_pem)
    for ca in issuers:
        if leaf.issuer != ca.subject:
            continue
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def classify(
    spec: CertSpec,
    installed: InstalledCertificate | None,
    issuers: Sequence[x509.Certificate],
    now: datetime,
) -> CertStatus:
    """The state of one configured certificate."""
    if installed is None:
        return CertStatus(spec.cluster, spec.name.value, "missing", *([None] * 6))
    info = installed.info
    ours = issued_by(installed.pem, issuers)
    renew = renewal_time(spec, info) if ours else None
    state: CertState
    if not ours:
        state = "foreign"
    elif info.not_after <= now:
        state = "expired"
    elif renew is not None and now >= renew:
        state = "due"
    else:
        state = "ok"
    return CertStatus(
        cluster=spec.cluster,
        name=spec.name.value,
        state=state,
        serial=info.serial,
        issuer=info.issuer,
        not_before=info.not_before,
        not_after=info.not_after,
        renew_at=renew if renew is not None else (now if state != "ok" else None),
        fingerprint=info.fingerprint,
    )


def plan(
    statuses: Iterable[CertStatus],
    *,
    force: Iterable[tuple[str, str]] = (),
    replace_foreign: bool = True,
) -> list[Action]:
    """The actions one pass takes: every certificate not ``ok``, and every forced one."""
    forced = set(force)
    actions = []
    for status in statuses:
        key = (status.cluster, status.name)
        if key in forced:
            actions.append(Action(status.cluster, status.name, "forced"))
        elif status.state == "foreign" and not replace_foreign:
            continue
        elif status.state != "ok":
            actions.append(Action(status.cluster, status.name, status.state))
    return actions


def next_deadline(statuses: Iterable[CertStatus]) -> datetime | None:
    """The earliest renewal time among certificates that are ``ok`` now."""
    times = [s.renew_at for s in statuses if s.state == "ok" and s.renew_at is not None]
    return min(times) if times else None
