"""Maintenance windows: the grammar (config) and the pure decisions (decisions.windows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vault_bridge.config.windows import parse_window, parse_windows
from vault_bridge.decisions.windows import (
    next_opening,
    open_window,
    safety_deadline,
    window_decision,
)

# 2026-12-05 is a Saturday
SAT = datetime(2026, 12, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "days", "start", "end", "zone"),
    [
        ("daily 02:00-04:00 UTC", set(range(7)), 120, 240, "UTC"),
        ("Sat 22:00-02:00 utc", {5}, 1320, 120, "UTC"),
        ("Mon,Thu 01:30-02:00 Europe/Berlin", {0, 3}, 90, 120, "Europe/Berlin"),
        ("Mon-Fri 09:00-17:00 America/New_York", {0, 1, 2, 3, 4}, 540, 1020, "America/New_York"),
        ("Sat-Mon 00:00-23:59 UTC", {5, 6, 0}, 0, 1439, "UTC"),
        ("Mon-Wed,Sat 00:00-01:00 UTC", {0, 1, 2, 5}, 0, 60, "UTC"),
    ],
)
def test_window_grammar(text: str, days: set[int], start: int, end: int, zone: str) -> None:
    window = parse_window(text)
    assert (set(window.days), window.start, window.end, window.zone) == (days, start, end, zone)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Sat 02:00-04:00", "expected '<days> HH:MM-HH:MM <zone>'"),
        ("Sat 2:00-04:00 UTC", "'2:00' in 'Sat 2:00-04:00 UTC' is not a time HH:MM"),
        ("Sat 02:00-24:00 UTC", "is not a time"),
        ("Satur 02:00-04:00 UTC", "'Satur' in 'Satur 02:00-04:00 UTC' is not a day"),
        ("Sat 02:00-04:00 Mars/Olympus", "'Mars/Olympus' in"),
        ("Sat 02:00-02:00 UTC", "is empty"),
        ("Sat 02:00 UTC", "is not HH:MM-HH:MM"),
    ],
)
def test_window_grammar_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_window(text)


def test_in_and_next_window_across_midnight() -> None:
    windows = parse_windows("Sat 22:00-02:00 UTC")
    assert open_window(windows, SAT + timedelta(hours=21, minutes=59)) is None
    assert open_window(windows, SAT + timedelta(hours=22)) is not None
    assert open_window(windows, SAT + timedelta(hours=25, minutes=59)) is not None  # Sun 01:59
    assert open_window(windows, SAT + timedelta(hours=26)) is None  # Sun 02:00
    at, _ = next_opening(windows, SAT + timedelta(hours=26)) or (None, None)
    assert at == SAT + timedelta(days=7, hours=22)
    # inside the window, the opening is now
    now = SAT + timedelta(hours=23)
    assert next_opening(windows, now) == (now, windows[0])


def test_iana_zone_and_daylight_saving() -> None:
    # Europe/Berlin: CET (UTC+1) in winter, CEST (UTC+2) from 2026-03-29
    windows = parse_windows(["Sun 03:00-04:00 Europe/Berlin"])
    winter = next_opening(windows, datetime(2026, 3, 20, tzinfo=UTC))
    summer = next_opening(windows, datetime(2026, 3, 23, tzinfo=UTC))
    assert winter is not None and winter[0] == datetime(2026, 3, 22, 2, 0, tzinfo=UTC)
    assert summer is not None and summer[0] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def _decide(windows: str, renew_at: datetime, now: datetime, margin: float = 0.2):  # type: ignore[no-untyped-def]
    not_before = renew_at - timedelta(days=20)  # 30-day certificate, renewal at 2/3
    return window_decision(
        parse_windows(windows),
        renew_at=renew_at,
        not_before=not_before,
        not_after=not_before + timedelta(days=30),
        margin=margin,
        now=now,
    )


def test_planned_renewal_waits_for_the_next_window() -> None:
    renew_at = SAT - timedelta(days=2)  # Thursday
    decision = _decide("Sat 02:00-04:00 UTC", renew_at, renew_at + timedelta(hours=1))
    assert not decision.go and decision.at == SAT + timedelta(hours=2)
    assert decision.window == "Sat 02:00-04:00 UTC" and not decision.override
    inside = _decide("Sat 02:00-04:00 UTC", renew_at, SAT + timedelta(hours=3))
    assert inside.go and not inside.override


def test_no_window_before_the_safety_deadline_overrides() -> None:
    renew_at = SAT + timedelta(hours=5)  # just after Saturday's window; next one in 7 days
    # 30-day certificate: the deadline (20% left) is 4 days after the renewal time
    decision = _decide("Sat 02:00-04:00 UTC", renew_at, renew_at)
    deadline = renew_at + timedelta(days=4)
    assert not decision.go and decision.at == deadline and decision.override
    later = _decide("Sat 02:00-04:00 UTC", renew_at, deadline + timedelta(seconds=1))
    assert later.go and later.override
    assert safety_deadline(renew_at - timedelta(days=20), renew_at + timedelta(days=10), 0.2) == (
        deadline
    )


def test_without_windows_the_renewal_time_rules() -> None:
    decision = window_decision(
        (), renew_at=SAT, not_before=SAT, not_after=SAT + timedelta(days=1), margin=0.2, now=SAT
    )
    assert decision.go and decision.window is None
