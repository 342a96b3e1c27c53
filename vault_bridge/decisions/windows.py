"""Pure decisions about maintenance windows: is ``now`` inside one, when does the next open,
and how long may a planned renewal wait for it.

A planned renewal (a valid certificate of ours whose renewal time has come) waits for the next
window, but never past the safety margin: once less than ``window_safety_margin`` of its
lifetime is left it goes ahead outside any window (an *override*). Nothing here reads the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from vault_bridge.config.windows import MaintenanceWindow


def _openings(window: MaintenanceWindow, around: datetime) -> list[tuple[datetime, datetime]]:
    """The window's occurrences that start from the day before ``around`` to a week after
    it, as (start, end) in UTC."""
    tz = window.tz
    local = around.astimezone(tz)
    out = []
    for offset in range(-1, 9):
        day = (local + timedelta(days=offset)).date()
        if day.weekday() not in window.days:
            continue
        start = datetime(
            day.year, day.month, day.day, window.start // 60, window.start % 60, tzinfo=tz
        )
        # wall-clock arithmetic in the zone, then to UTC (DST days are 23 or 25 hours long)
        end_day = day + timedelta(days=1) if window.end <= window.start else day
        end = datetime(
            end_day.year, end_day.month, end_day.day, window.end // 60, window.end % 60, tzinfo=tz
        )
        out.append((start.astimezone(UTC), end.astimezone(UTC)))
    return out


def open_window(windows: Sequence[MaintenanceWindow], now: datetime) -> MaintenanceWindow | None:
    """The window ``now`` is in, if any."""
    for window in windows:
        for start, end in _openings(window, now):
            if start <= now < end:
                return window
    return None


def next_opening(
    windows: Sequence[MaintenanceWindow], now: datetime
) -> tuple[datetime, MaintenanceWindow] | None:
    """When the next window opens after ``now`` (``now`` itself when one is open)."""
    best: tuple[datetime, MaintenanceWindow] | None = None
    for window in windows:
        for start, end in _openings(window, now):
            at = now if start <= now < end else start
            if at < now:
                continue
            if best is None or at < best[0]:
                best = (at, window)
    return best


@dataclass(frozen=True)
class WindowDecision:
    """What the windows say about a planned renewal at ``now``.

    ``go``: renew now; ``at``: when it will go (now, the next opening or the safety deadline);
    ``window``: the window it waits for (or goes in); ``override``: goes now, outside every
    window, because of the safety margin."""

    go: bool
    at: datetime
    window: str | None
    override: bool = False


def safety_deadline(not_before: datetime, not_after: datetime, margin: float) -> datetime:
    """The moment less than ``margin`` of the lifetime is left: a renewal waits no longer."""
    return not_after - (not_after - not_before) * margin


def window_decision(
    windows: Sequence[MaintenanceWindow],
    *,
    renew_at: datetime,
    not_before: datetime,
    not_after: datetime,
    margin: float,
    now: datetime,
) -> WindowDecision:
    """When a certificate of ours due at ``renew_at`` is renewed, given its windows."""
    if not windows:
        return WindowDecision(now >= renew_at, renew_at, None)
    # it never waits past the deadline, and never goes before its renewal time
    deadline = max(safety_deadline(not_before, not_after, margin), renew_at)
    current = open_window(windows, now)
    if now >= renew_at and current is not None:
        return WindowDecision(True, now, current.text)
    opening = next_opening(windows, max(renew_at, now))
    if opening is not None and opening[0] <= deadline:
        return WindowDecision(False, opening[0], opening[1].text)
    return WindowDecision(now >= deadline, deadline, None, override=True)
