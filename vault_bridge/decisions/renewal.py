"""Pure decisions: which certificate is in which state, when it is due, what a pass must do.

Nothing here performs I/O or reads the clock: the installed certificates, our issuers and
``now`` are passed in, so the same inputs always give the same plan.

"Ours" means signed by any issuer of the PKI mount (a multi-issuer mount keeps the previous
intermediate after a rotation), unexpired and not revoked. A certificate of a previous issuer
stays ``ok`` and moves to the new one at its renewal time, or earlier within
``issuer_migration``; a planned renewal waits for the next maintenance window, never past the
safety margin.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from vault_bridge.config.durations import format_duration
from vault_bridge.config.schema import DEFAULT_RENEW_AT
from vault_bridge.config.settings import CertSpec
from vault_bridge.decisions.windows import WindowDecision, window_decision
from vault_bridge.models.certificates import (
    CertificateInfo,
    CertState,
    InstalledCertificate,
    load_leaf,
)
from vault_bridge.models.times import iso, iso_or_none
from vault_bridge.models.vault import MountIssuers, PkiIssuer

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
    # the maintenance window the renewal waits for (or goes in)
    window: str | None = None
    # the renewal goes (or will go) outside every window: the safety margin is reached
    window_override: bool = False
    # from then on the certificate is overdue (its renewal time long passed, not renewed)
    overdue_at: datetime | None = None
    # the issuer of the mount that signed it (its name, else its ID)
    signed_by: str | None = None
    # the issuer that signs its next certificate expires within one lifetime of it
    issuer_expiring: bool = False
    # signed by another issuer of the mount than the one that signs its next certificate
    issuer_outdated: bool = False
    warnings: tuple[str, ...] = ()
    # filled in from the agent's retry state (status), not by the classification
    last_error: str | None = None
    next_attempt: datetime | None = None

    def overdue(self, now: datetime) -> bool:
        return self.overdue_at is not None and now >= self.overdue_at

    def held(self, now: datetime) -> bool:
        """Due, but waiting for a maintenance window."""
        return self.state == "due" and self.renew_at is not None and self.renew_at > now

    def as_json(self) -> dict[str, str | None]:
        out = {
            "cluster": self.cluster,
            "name": self.name,
            "serial": self.serial,
            "issuer": self.issuer,
            "not_after": iso_or_none(self.not_after),
            "renew_at": iso_or_none(self.renew_at),
            "state": self.state,
            "window": self.window,
            "signed_by": self.signed_by,
            "warnings": "; ".join(self.warnings) or None,
            "last_error": self.last_error,
            "next_attempt": iso_or_none(self.next_attempt),
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


def windowed(
    spec: CertSpec, info: CertificateInfo, renew: datetime, now: datetime
) -> WindowDecision:
    """When a renewal due at ``renew`` goes, given the certificate's maintenance windows."""
    return window_decision(
        spec.maintenance_windows,
        renew_at=renew,
        not_before=info.not_before,
        not_after=info.not_after,
        margin=spec.window_safety_margin,
        now=now,
    )


def issued_by(cert_pem: str, issuers: Sequence[x509.Certificate]) -> bool:
    """True when the leaf of ``cert_pem`` was signed directly by one of ``issuers``."""
    return _signer(load_leaf(cert_pem), issuers) is not None


def _signer(leaf: x509.Certificate, issuers: Sequence[x509.Certificate]) -> int | None:
    for index, ca in enumerate(issuers):
        if leaf.issuer != ca.subject:
            continue
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return index
    return None


def migration_jitter(cluster: str, name: str, serial: str) -> float:
    """A stable fraction in [0, 1) per certificate, to spread a move to a new issuer."""
    digest = hashlib.sha256(f"migrate/{cluster}/{name}/{serial}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _target(spec: CertSpec, mount: MountIssuers) -> PkiIssuer | None:
    """The issuer that signs the next certificate: ``issuer_ref``'s, else the default."""
    return mount.find(spec.issuer_ref) if spec.issuer_ref else mount.default


def classify(
    spec: CertSpec,
    installed: InstalledCertificate | None,
    issuers: Sequence[x509.Certificate] | MountIssuers,
    now: datetime,
    *,
    revoked: bool = False,
    migration_since: datetime | None = None,
) -> CertStatus:
    """The state of one configured certificate.

    ``issuers``: every issuer of the mount (or just CA certificates); ``revoked``: Vault said
    this certificate is revoked (positive proof only); ``migration_since``: since when the
    issuer that signs new certificates has been seen as such (anchors ``issuer_migration``).
    """
    if installed is None:
        return CertStatus(
            spec.cluster, spec.name.value, "missing", None, None, None, None, None, None
        )
    info = installed.info
    mount = issuers if isinstance(issuers, MountIssuers) else None
    cas = [i.x509() for i in issuers.issuers] if isinstance(issuers, MountIssuers) else issuers
    index = _signer(load_leaf(installed.pem), cas)
    signer = mount.issuers[index] if mount and index is not None else None
    foreign = CertStatus(
        cluster=spec.cluster,
        name=spec.name.value,
        state="foreign",
        serial=info.serial,
        issuer=info.issuer,
        not_before=info.not_before,
        not_after=info.not_after,
        renew_at=now,
        fingerprint=info.fingerprint,
        signed_by=signer.ref if signer else None,
    )
    if index is None:
        return foreign
    if revoked:
        return replace(foreign, state="revoked")
    lifetime = info.not_after - info.not_before
    renew = renewal_time(spec, info)
    target = _target(spec, mount) if mount else None
    warnings: list[str] = []
    if signer is not None and signer.not_after < info.not_after:
        # nothing outlives its issuer: renew as if the certificate ended with it
        renew = min(renew, signer.not_after - (info.not_after - renew))
    moving = signer is not None and target is not None and signer.issuer_id != target.issuer_id
    if moving and spec.issuer_migration is not None and migration_since is not None:
        share = migration_jitter(spec.cluster, spec.name.value, info.serial)
        renew = min(renew, migration_since + spec.issuer_migration * share)
    if moving and signer is not None and target is not None:
        which = f"issuer_ref {spec.issuer_ref}" if spec.issuer_ref else "the mount's default"
        warnings.append(
            f"signed by issuer {signer.ref}, not {which} {target.ref} (moves to it at renewal)"
        )
    issuer_expiring = False
    if target is not None and target.not_after - now < spec.ttl:
        issuer_expiring = True
        warnings.append(
            f"issuer {target.ref} of {target.mount} expires {iso(target.not_after)}, sooner "
            f"than one lifetime ({format_duration(spec.ttl)}) of this certificate: Vault will "
            f"shorten or refuse the next one"
        )
    overdue_slack = lifetime * spec.overdue_after
    if info.not_after <= now:
        return replace(
            foreign,
            state="expired",
            overdue_at=renew + overdue_slack,
            issuer_expiring=issuer_expiring,
            issuer_outdated=moving,
            warnings=tuple(warnings),
        )
    decision = windowed(spec, info, renew, now)
    state: CertState = "due" if now >= renew else "ok"
    return replace(
        foreign,
        state=state,
        renew_at=decision.at,
        window=decision.window,
        window_override=decision.override,
        overdue_at=decision.at + overdue_slack,
        issuer_expiring=issuer_expiring,
        issuer_outdated=moving,
        warnings=tuple(warnings),
    )


def plan(
    statuses: Iterable[CertStatus],
    *,
    force: Iterable[tuple[str, str]] = (),
    replace_foreign: bool = True,
    now: datetime | None = None,
) -> list[Action]:
    """The actions one pass takes: every certificate not ``ok`` (a due one only once its
    maintenance window is open, see :meth:`CertStatus.held`), and every forced one."""
    forced = set(force)
    actions = []
    for status in statuses:
        key = (status.cluster, status.name)
        if key in forced:
            actions.append(Action(status.cluster, status.name, "forced"))
        elif status.state == "foreign" and not replace_foreign:
            continue
        elif status.state == "due" and status.renew_at is not None and now is not None:
            if status.renew_at <= now:
                actions.append(Action(status.cluster, status.name, _due_reason(status)))
        elif status.state != "ok":
            actions.append(Action(status.cluster, status.name, status.state))
    return actions


def _due_reason(status: CertStatus) -> str:
    if status.window_override:
        return "due, outside every maintenance window: the safety margin is reached"
    return f"due, in maintenance window {status.window}" if status.window else "due"


def held(statuses: Iterable[CertStatus], now: datetime) -> list[CertStatus]:
    """Due certificates waiting for a maintenance window."""
    return [s for s in statuses if s.held(now)]


def next_deadline(statuses: Iterable[CertStatus]) -> datetime | None:
    """The earliest renewal time among certificates that are ``ok`` now, or due and waiting
    for a maintenance window."""
    times = [s.renew_at for s in statuses if s.state in ("ok", "due") and s.renew_at is not None]
    return min(times) if times else None
