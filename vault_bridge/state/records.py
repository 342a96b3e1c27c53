"""What the agent remembers between runs: the content of ``state.json``.

:class:`State` holds, by cluster/certificate, the certificate of ours installed
(:class:`CertRecord`: serial, not_after, mount, lease, issue times, backoff), the superseded
certificates awaiting revocation (:class:`Superseded`) and the intent journal (:class:`Intent`),
and converts itself to and from the JSON of ``state.json``. Reading and writing the file is
:mod:`vault_bridge.state.store`; recording a rotation step by step is :mod:`vault_bridge.state.journal`.

Public data only: serials, dates, fingerprints, lease IDs, public certificate PEMs. Never a
private key, token, password or secret ID.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from vault_bridge.decisions.schedule import Backoff, recent_issues
from vault_bridge.models.certificates import CertChange, CertificateInfo
from vault_bridge.models.times import iso, iso_or_none, parse_iso

logger = logging.getLogger(__name__)

STATE_VERSION = 1

Key = tuple[str, str]  # (cluster, certificate name)
Phase = Literal["issued", "installing", "followups"]


# -- values ----------------------------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    return None if value is None else parse_iso(value)


def _req_time(value: Any) -> datetime:
    parsed = _time(value)
    if parsed is None:
        raise ValueError("missing time")
    return parsed


def key_text(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


@dataclass(frozen=True)
class CertRecord:
    """The certificate of ours installed for one cluster/name, as far as we know."""

    serial: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    fingerprint: str | None = None
    mount: str | None = None
    lease_id: str | None = None
    issued_at: tuple[datetime, ...] = ()  # issue times in the last hour (runaway guard)
    backoff: Backoff = field(default_factory=Backoff)

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "not_before": iso_or_none(self.not_before),
            "not_after": iso_or_none(self.not_after),
            "fingerprint": self.fingerprint,
            "mount": self.mount,
            "lease_id": self.lease_id,
            "issued_at": [iso_or_none(t) for t in self.issued_at],
            "backoff": {
                "failures": self.backoff.failures,
                "next_attempt": iso_or_none(self.backoff.next_attempt),
                "last_error": self.backoff.last_error,
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CertRecord:
        backoff = data.get("backoff") or {}
        return cls(
            serial=data.get("serial"),
            not_before=_time(data.get("not_before")),
            not_after=_time(data.get("not_after")),
            fingerprint=data.get("fingerprint"),
            mount=data.get("mount"),
            lease_id=data.get("lease_id"),
            issued_at=tuple(_req_time(t) for t in data.get("issued_at") or ()),
            backoff=Backoff(
                failures=int(backoff.get("failures") or 0),
                next_attempt=_time(backoff.get("next_attempt")),
                last_error=backoff.get("last_error"),
            ),
        )


@dataclass(frozen=True)
class Superseded:
    """A certificate of ours that is no longer installed, to revoke after the grace period."""

    cluster: str
    name: str
    serial: str
    mount: str
    not_after: datetime
    revoke_after: datetime
    reason: Literal["superseded", "orphan"] = "superseded"
    pem: str | None = None  # public certificate, to revoke by PEM when the role keeps no copy
    failures: int = 0
    next_attempt: datetime | None = None

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.failures, self.next_attempt)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("not_after", "revoke_after", "next_attempt"):
            out[name] = iso_or_none(getattr(self, name))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Superseded:
        reason = data.get("reason", "superseded")
        if reason not in ("superseded", "orphan"):
            raise ValueError(f"unknown reason {reason!r}")
        return cls(
            cluster=str(data["cluster"]),
            name=str(data["name"]),
            serial=str(data["serial"]),
            mount=str(data["mount"]),
            not_after=_req_time(data["not_after"]),
            revoke_after=_req_time(data["revoke_after"]),
            reason=reason,
            pem=data.get("pem"),
            failures=int(data.get("failures") or 0),
            next_attempt=_time(data.get("next_attempt")),
        )


@dataclass(frozen=True)
class Intent:
    """A journal entry: a certificate on its way to a cluster.

    ``issued``: Vault issued it, the install was not sent (on replay: never installed).
    ``installing``: the install request may have been sent (on replay: read the cluster).
    ``followups``: installed; the Active-Active / Replica Of follow-ups are pending.

    Public parts only: the private key is never journaled.
    """

    cluster: str
    name: str
    phase: Phase
    serial: str
    not_after: datetime
    mount: str
    new_pem: str  # the chain as installed, leaf first (public)
    old_pem: str | None  # what it replaces (public); the follow-ups need it
    lease_id: str | None = None
    started_at: datetime | None = None

    @property
    def key(self) -> Key:
        return (self.cluster, self.name)

    @property
    def info(self) -> CertificateInfo:
        return CertificateInfo.from_pem(self.new_pem)

    @property
    def cert_change(self) -> CertChange:
        return CertChange(self.cluster, self.name, self.new_pem, self.old_pem)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["not_after"] = iso_or_none(self.not_after)
        out["started_at"] = iso_or_none(self.started_at)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Intent:
        phase = data["phase"]
        if phase not in ("issued", "installing", "followups"):
            raise ValueError(f"unknown journal phase {phase!r}")
        return cls(
            cluster=str(data["cluster"]),
            name=str(data["name"]),
            phase=phase,
            serial=str(data["serial"]),
            not_after=_req_time(data["not_after"]),
            mount=str(data["mount"]),
            new_pem=str(data["new_pem"]),
            old_pem=data.get("old_pem"),
            lease_id=data.get("lease_id"),
            started_at=_time(data.get("started_at")),
        )


@dataclass
class State:
    """Everything in ``state.json``. Changed through the methods below, then saved."""

    certificates: dict[Key, CertRecord] = field(default_factory=dict)
    superseded: list[Superseded] = field(default_factory=list)
    journal: dict[Key, Intent] = field(default_factory=dict)  # in flight: issued, installing
    pending: dict[Key, Intent] = field(default_factory=dict)  # installed, follow-ups pending

    def record(self, key: Key) -> CertRecord:
        return self.certificates.get(key) or CertRecord()

    def update(self, key: Key, **changes: Any) -> CertRecord:
        record = replace(self.record(key), **changes)
        self.certificates[key] = record
        return record

    # -- the runaway guard -------------------------------------------------------------------

    def note_issue(self, key: Key, now: datetime) -> None:
        """Remember one more certificate asked of Vault (older than the window is dropped)."""
        recent = recent_issues(self.record(key).issued_at, now)
        self.update(key, issued_at=(*recent, now))

    def forget_issue(self, key: Key, at: datetime) -> None:
        times = list(self.record(key).issued_at)
        if at in times:
            times.remove(at)
        self.update(key, issued_at=tuple(times))

    # -- the journal -------------------------------------------------------------------------

    def journal_issued(self, intent: Intent) -> None:
        self._in_flight(intent)

    def journal_installing(self, intent: Intent) -> None:
        self._in_flight(intent)

    def _in_flight(self, intent: Intent) -> None:
        previous = self.journal.get(intent.key)
        if previous is not None and previous.phase == "issued" and previous.serial != intent.serial:
            self.orphan(previous, previous.started_at or intent.started_at or _epoch())
        self.journal[intent.key] = intent

    def journal_installed(self, key: Key, revoke_after: datetime) -> Intent | None:
        """The install of ``key`` happened: its follow-ups are pending now."""
        intent = self.journal.pop(key, None)
        if intent is None:
            return self.pending.get(key)
        earlier = self.pending.get(key)
        if earlier is not None and earlier.serial != intent.serial:
            # The follow-ups of an earlier change never finished: the databases still hold
            # that change's old certificate, so the follow-ups now go from it to the new
            # one; the certificate in between is superseded.
            intent = replace(intent, old_pem=earlier.old_pem)
            self.superseded.append(
                Superseded(
                    cluster=key[0],
                    name=key[1],
                    serial=earlier.serial,
                    mount=earlier.mount,
                    not_after=earlier.not_after,
                    revoke_after=revoke_after,
                    pem=_leaf_only(earlier.new_pem),
                )
            )
        self.pending[key] = replace(intent, phase="followups")
        return self.pending[key]

    def replacement_done(self, entry: Superseded) -> bool:
        """Whether what replaced ``entry`` is installed with its follow-ups done (nothing of
        its cluster/name left in the journal); an orphan replaced nothing."""
        key = (entry.cluster, entry.name)
        return entry.reason == "orphan" or (key not in self.journal and key not in self.pending)

    def complete(self, key: Key, revoke_after: datetime) -> Intent | None:
        """The change of ``key`` is installed and its follow-ups done: remember the new
        certificate, queue the one it replaced for revocation, clear the journal entry."""
        intent = self.pending.pop(key, None)
        if intent is None:
            return None
        record = self.record(key)
        old_serial = CertificateInfo.from_pem(intent.old_pem).serial if intent.old_pem else None
        if (
            record.serial
            and record.mount
            and record.not_after
            and record.serial == old_serial
            and record.serial != intent.serial
        ):
            self.superseded.append(
                Superseded(
                    cluster=key[0],
                    name=key[1],
                    serial=record.serial,
                    mount=record.mount,
                    not_after=record.not_after,
                    revoke_after=revoke_after,
                    pem=_leaf_only(intent.old_pem),
                )
            )
        info = intent.info
        self.update(
            key,
            serial=intent.serial,
            not_before=info.not_before,
            not_after=info.not_after,
            fingerprint=info.fingerprint,
            mount=intent.mount,
            lease_id=intent.lease_id,
            backoff=Backoff(),
        )
        return intent

    def orphan(self, intent: Intent, now: datetime) -> None:
        """A certificate Vault issued that never went in: revoke it without waiting."""
        if self.journal.get(intent.key) == intent:
            del self.journal[intent.key]
        self.superseded.append(
            Superseded(
                cluster=intent.cluster,
                name=intent.name,
                serial=intent.serial,
                mount=intent.mount,
                not_after=intent.not_after,
                revoke_after=now,
                reason="orphan",
                pem=_leaf_only(intent.new_pem),
            )
        )

    # -- JSON --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "certificates": {
                key_text(key): record.to_json() for key, record in sorted(self.certificates.items())
            },
            "superseded": [entry.to_json() for entry in self.superseded],
            "journal": [
                intent.to_json()
                for intent in sorted(
                    [*self.pending.values(), *self.journal.values()],
                    key=lambda i: (i.key, i.phase != "followups"),
                )
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> State:
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        version = data.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"unknown state version {version!r} (expected {STATE_VERSION})")
        certificates: dict[Key, CertRecord] = {}
        for text, record in (data.get("certificates") or {}).items():
            cluster, sep, name = str(text).rpartition("/")
            if not sep:
                raise ValueError(f"bad certificate key {text!r}")
            certificates[(cluster, name)] = CertRecord.from_json(record)
        superseded = [Superseded.from_json(e) for e in data.get("superseded") or ()]
        journal: dict[Key, Intent] = {}
        pending: dict[Key, Intent] = {}
        for entry in data.get("journal") or ():
            intent = Intent.from_json(entry)
            (pending if intent.phase == "followups" else journal)[intent.key] = intent
        return cls(certificates, superseded, journal, pending)


def _epoch() -> datetime:
    return datetime.fromtimestamp(0, UTC)


def _leaf_only(pem: str | None) -> str | None:
    if not pem:
        return None
    end = "-----END CERTIFICATE-----"
    head, sep, _ = pem.partition(end)
    return f"{head}{sep}\n" if sep else None


# -- log lines -------------------------------------------------------------------------------


def log_change(
    message: str,
    *,
    cluster: str,
    certificate: str,
    serial: str | None,
    not_after: datetime | None,
    level: int = logging.INFO,
) -> None:
    """One line per state change, with the certificate's context as structured fields."""
    logger.log(
        level,
        "%s: %s on %s (serial %s, not_after %s)",
        message,
        certificate,
        cluster,
        serial or "-",
        iso(not_after),
        extra={
            "cluster": cluster,
            "certificate": certificate,
            "serial": serial,
            "not_after": iso_or_none(not_after),
        },
    )
