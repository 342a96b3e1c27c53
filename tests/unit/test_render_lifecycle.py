"""`plan` and `status` show the window a renewal waits for, issuer warnings, the last error and
the next attempt."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from vault_bridge.cli.render import plan_text, status_json, status_table
from vault_bridge.decisions.renewal import Action, CertStatus

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SAT = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)


def status(**kw: object) -> CertStatus:
    base = CertStatus(
        "east",
        "proxy",
        "due",
        "0a:0b",
        "CN=Int",
        NOW - timedelta(days=20),
        NOW + timedelta(days=10),
        SAT,
        "ff",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_plan_lists_renewals_waiting_for_a_window() -> None:
    held = status(window="Sat 02:00-04:00 UTC")
    text = plan_text([], [held], NOW)
    assert text.splitlines() == [
        "Nothing to do: every certificate is installed, ours and not due.",
        "  ~ proxy on east: due, waits for maintenance window 'Sat 02:00-04:00 UTC' at 2026-12-05 02:00:00Z",
    ]
    text = plan_text([Action("east", "cm", "missing")], [held], NOW)
    assert "  + cm on east (missing)" in text and "~ proxy on east" in text


def test_status_notes_and_json_fields() -> None:
    s = status(
        window="Sat 02:00-04:00 UTC",
        warnings=("signed by issuer old, not the mount's default new (moves to it at renewal)",),
        last_error="injected fault",
        next_attempt=NOW + timedelta(minutes=10),
        signed_by="old",
    )
    lines = status_table([s]).splitlines()
    assert "proxy on east: renewal waits for maintenance window 'Sat 02:00-04:00 UTC'" in lines
    assert any(line.startswith("warning: proxy on east: signed by issuer old") for line in lines)
    assert "proxy on east: last error: injected fault (next attempt 2026-12-02 12:10:00Z)" in lines
    (row,) = json.loads(status_json([s]))
    assert row["window"] == "Sat 02:00-04:00 UTC" and row["signed_by"] == "old"
    assert row["last_error"] == "injected fault" and row["next_attempt"] == "2026-12-02T12:10:00Z"
    (empty,) = json.loads(status_json([status(state="ok")]))
    assert (
        empty["last_error"] is None and empty["next_attempt"] is None and empty["warnings"] is None
    )
