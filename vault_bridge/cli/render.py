"""Text and JSON renderings of statuses, plans and pass results (pure functions)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

from vault_bridge.decisions.renewal import Action, CertStatus
from vault_bridge.models.times import iso_or_none, table_time
from vault_bridge.rotation.results import PassResult


def _short_issuer(issuer: str | None) -> str:
    if not issuer:
        return "-"
    for part in issuer.split(","):
        if part.startswith("CN="):
            return part[3:]
    return issuer


# [ha]: by cluster, the replica that leads it (None: nobody) and when its lease expires.
Leaders = Mapping[str, tuple[str | None, datetime | None]]


def status_table(statuses: Sequence[CertStatus], leaders: Leaders | None = None) -> str:
    headers: tuple[str, ...] = ("CLUSTER", "NAME", "STATE", "SERIAL", "ISSUER", "NOT AFTER")
    headers += ("RENEW AT", "LEADER", "LEASE EXPIRES") if leaders is not None else ("RENEW AT",)
    ocsp = any(s.ocsp is not None for s in statuses)  # the column only where OCSP is on
    rows = [
        (
            s.cluster,
            s.name,
            s.state,
            (s.serial or "-")[:23] + ("..." if s.serial and len(s.serial) > 23 else ""),
            _short_issuer(s.issuer),
            table_time(s.not_after),
            table_time(s.renew_at),
        )
        + (_leader_cells(leaders, s.cluster) if leaders is not None else ())
        + ((s.ocsp or "-",) if ocsp else ())
        for s in statuses
    ]
    if ocsp:
        headers += ("OCSP",)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines.extend(_notes(statuses))
    return "\n".join(lines)


def _leader_cells(leaders: Leaders, cluster: str) -> tuple[str, str]:
    leader, expires = leaders.get(cluster, (None, None))
    return (leader or "-", table_time(expires))


def _notes(statuses: Sequence[CertStatus]) -> list[str]:
    """Below the table: windows waited for, issuer warnings, the last error, the next attempt."""
    notes = []
    for s in statuses:
        where = f"{s.name} on {s.cluster}"
        if s.window and s.state in ("ok", "due"):
            notes.append(f"{where}: renewal waits for maintenance window {s.window!r}")
        elif s.window_override and s.state in ("ok", "due"):
            notes.append(f"{where}: renewal goes outside every maintenance window (safety margin)")
        notes.extend(f"warning: {where}: {w}" for w in s.warnings)
        if s.last_error:
            notes.append(
                f"{where}: last error: {s.last_error} (next attempt {table_time(s.next_attempt)})"
            )
    return notes


def status_json(statuses: Sequence[CertStatus], leaders: Leaders | None = None) -> str:
    """A list of objects; each has ``leader`` (replica id or null) and ``lease_expires``
    (ISO 8601 UTC or null): both null without ``[ha]``."""
    rows = []
    for s in statuses:
        leader, expires = (leaders or {}).get(s.cluster, (None, None))
        rows.append(
            {
                **s.as_json(),
                "leader": leader,
                "lease_expires": iso_or_none(expires),
            }
        )
    return json.dumps(rows, indent=2)


def plan_text(
    actions: Sequence[Action],
    statuses: Sequence[CertStatus] = (),
    now: datetime | None = None,
) -> str:
    waiting = [s for s in statuses if now is not None and s.held(now)]
    lines = []
    if not actions:
        lines.append("Nothing to do: every certificate is installed, ours and not due.")
    else:
        lines.append(f"{len(actions)} certificate(s) would be issued and installed:")
        lines += [f"  + {a.name} on {a.cluster} ({a.reason})" for a in actions]
    for s in waiting:
        what = f"maintenance window {s.window!r}" if s.window else "the safety margin"
        lines.append(
            f"  ~ {s.name} on {s.cluster}: due, waits for {what} at {table_time(s.renew_at)}"
        )
    return "\n".join(lines)


def pass_lines(result: PassResult) -> list[str]:
    lines = []
    labels = {
        "installed": "installed",
        "partial": "installed (partially applied)",
        "unconfirmed": "installed (not yet confirmed)",
    }
    for outcome in result.outcomes:
        label = labels.get(outcome.result)
        if label is not None:
            note = f" ({outcome.note})" if outcome.note else ""
            lines.append(
                f"{label} {outcome.name} on {outcome.cluster}: serial {outcome.serial}, "
                f"not_after {table_time(outcome.not_after)}{note}"
            )
    return lines
