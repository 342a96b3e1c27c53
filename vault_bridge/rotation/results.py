"""What a pass reports: the changes it installed, each certificate's outcome, the pass's result."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from vault_bridge.decisions.renewal import CertStatus
from vault_bridge.models.certificates import (
    CertChange,
    InstalledCertificate,
    IssuedCertificate,
)

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (cluster, certificate name)
Read = tuple[list[CertStatus], dict[str, InstalledCertificate]]


@dataclass(frozen=True)
class Change:
    """A certificate installed on a cluster in this pass, with the one it replaced."""

    cluster: str
    name: str
    issued: IssuedCertificate
    previous: InstalledCertificate | None

    @property
    def cert_change(self) -> CertChange:
        old = self.previous.pem if self.previous else None
        return CertChange(self.cluster, self.name, self.issued.chain_pem, old)


@dataclass(frozen=True)
class Outcome:
    cluster: str
    name: str
    # "installed" | "partial" (in place, but not every node confirmed: HTTP 409) |
    # "unconfirmed" (an internode install the cluster has not confirmed yet) | "failed"
    result: str
    serial: str | None = None
    not_after: datetime | None = None
    error: str | None = None
    reason: str = ""
    note: str | None = None  # what "partial" / "unconfirmed" means for this one


@dataclass
class PassResult:
    outcomes: list[Outcome] = field(default_factory=list)
    statuses: list[CertStatus] = field(default_factory=list)
    cluster_errors: dict[str, str] = field(default_factory=dict)
    # certificates renewed outside every maintenance window (the safety margin was reached)
    window_overrides: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.cluster_errors

    def summary(self) -> str:
        installed = sum(1 for o in self.outcomes if o.result == "installed")
        parts = [f"{installed} installed"]
        for result, label in (("partial", "partially applied"), ("unconfirmed", "not confirmed")):
            those = [o for o in self.outcomes if o.result == result]
            if those:
                names = ", ".join(f"{o.name} on {o.cluster}" for o in those)
                parts.append(f"{len(those)} installed, {label} ({names}: {those[0].note})")
        if self.failed:
            first = self.failed[0]
            parts.append(
                f"{len(self.failed)} of {len(self.outcomes)} certificates failed: "
                f"{first.name} on {first.cluster}: {first.error}"
            )
        for cluster, error in self.cluster_errors.items():
            parts.append(f"cluster {cluster} failed: {error}")
        return "; ".join(parts)
