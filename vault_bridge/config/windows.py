"""Maintenance windows as the configuration writes them: ``"<days> HH:MM-HH:MM <zone>"``.

Days are ``daily``, a day ``Mon`` .. ``Sun``, a list ``Mon,Thu`` or a range ``Mon-Fri`` (lists
of ranges too: ``Mon-Wed,Sat``); the zone is ``UTC`` or an IANA name (``Europe/Berlin``). A
window whose end is not after its start crosses midnight: ``Sat 22:00-02:00 UTC`` runs from
Saturday 22:00 to Sunday 02:00. When a window opens is decided by
:mod:`vault_bridge.decisions.windows`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_FORM = "expected '<days> HH:MM-HH:MM <zone>' such as 'Sat 02:00-04:00 UTC' or 'Mon-Fri 22:00-23:30 Europe/Berlin'"


@dataclass(frozen=True)
class MaintenanceWindow:
    """One window: on ``days`` (0 = Monday) from ``start`` to ``end`` (minutes after
    midnight, local time of ``zone``); ``end <= start`` crosses midnight."""

    text: str
    days: frozenset[int]
    start: int
    end: int
    zone: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    @property
    def length_minutes(self) -> int:
        return (self.end - self.start) % (24 * 60) or 24 * 60


def _minutes(text: str, window: str) -> int:
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"{_FORM}: {text!r} in {window!r} is not a time HH:MM")
    return int(match.group(1)) * 60 + int(match.group(2))


def _day(text: str, window: str) -> int:
    for index, day in enumerate(DAYS):
        if text.lower() == day.lower():
            return index
    raise ValueError(f"{_FORM}: {text!r} in {window!r} is not a day (daily, {', '.join(DAYS)})")


def _days(text: str, window: str) -> frozenset[int]:
    if text.lower() == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        if not dash:
            days.add(_day(first, window))
            continue
        a, b = _day(first, window), _day(last, window)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


def parse_window(text: str) -> MaintenanceWindow:
    """Parse one window; raise ``ValueError`` naming what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"{_FORM}, got {text!r}")
    parts = text.split()
    if len(parts) != 3:
        raise ValueError(f"{_FORM}, got {text!r}")
    days_text, span, zone = parts
    start_text, dash, end_text = span.partition("-")
    if not dash:
        raise ValueError(f"{_FORM}: {span!r} in {text!r} is not HH:MM-HH:MM")
    start, end = _minutes(start_text, text), _minutes(end_text, text)
    if start == end:
        raise ValueError(f"{_FORM}: the window {text!r} is empty (start equals end)")
    if zone.upper() == "UTC":
        zone = "UTC"
    else:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{_FORM}: {zone!r} in {text!r} is not UTC or an IANA time zone"
            ) from None
    return MaintenanceWindow(text, _days(days_text, text), start, end, zone)


def parse_windows(value: str | list[str]) -> tuple[MaintenanceWindow, ...]:
    """One window or a list of them (an empty list: none, i.e. no restriction)."""
    items = [value] if isinstance(value, str) else list(value)
    return tuple(parse_window(item) for item in items)
