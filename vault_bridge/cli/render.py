"""Text and JSON renderings of statuses, plans and pass results (pure functions)."""

from __future__ import annotations

import json
from collections.abc import Sequence

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
    return "\n".join(lines)


def status_json(statuses: Sequence[CertStatus]) -> str:
    return json.dumps([s.as_json() for s in statuses], indent=2)


def plan_text(actions: Sequence[Action]) -> str:
    if not actions:
        return "Nothing to do: every certificate is installed, ours and not due."
    lines = [f"{len(actions)} certificate(s) would be issued and installed:"]
    lines += [f"  + {a.name} on {a.cluster} ({a.reason})" for a in actions]
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
