"""Text and JSON renderings of statuses, plans and pass results (pure functions)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from vault_bridge.decisions.renewal import Action, CertStatus
from vault_bridge.models.times import table_time
from vault_bridge.rotation.executor import PassResult


def _short_issuer(issuer: str | None) -> str:
    if not issuer:
        return "-"
    for part in issuer.split(","):
        if part.startswith("CN="):
            return part[3:]
    return issuer


def status_table(statuses: Sequence[CertStatus]) -> str:
    headers: tuple[str, ...] = ("CLUSTER", "NAME", "STATE", "SERIAL", "ISSUER", "NOT AFTER")
    headers += ("RENEW AT",)
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
            *((s.ocsp or "-",) if ocsp else ()),
        )
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


def status_json(statuses: Sequence[CertStatus]) -> str:
    return json.dumps([s.as_json() for s in statuses], indent=2)


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
    for outcome in result.outcomes:
        if outcome.result == "installed":
            lines.append(
                f"installed {outcome.name} on {outcome.cluster}: serial {outcome.serial}, "
                f"not_after {table_time(outcome.not_after)}"
            )
    return lines
