"""Time values, defined once: the current UTC time and the ISO 8601 form of a time.

Every time in vault_bridge is timezone-aware UTC. Decisions never read the clock: they get
``now`` from a caller, whose default clock is :func:`utc_now`. Times are written (state file,
JSON output, log fields) as ISO 8601 UTC with a ``Z``, e.g. ``2026-12-27T07:10:29Z``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (the default clock everywhere)."""
    return datetime.now(UTC)


def iso(value: datetime | None) -> str:
    """ISO 8601 in UTC with a ``Z``: ``2026-12-27T07:10:29Z`` (microseconds when there are);
    ``-`` without a time (log lines and text)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else "-"


def iso_or_none(value: datetime | None) -> str | None:
    """:func:`iso`, or None without a time (JSON: the state file, ``status --json``)."""
    return iso(value) if value else None


def parse_iso(value: Any) -> datetime:
    """The inverse of :func:`iso`: any ISO 8601 time with a timezone (``Z`` included), in UTC.

    Raises ``ValueError`` for text that is not one, or a time without a timezone.
    """
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"time without a timezone: {value!r}")
    return parsed.astimezone(UTC)


def table_time(value: datetime | None) -> str:
    """The short form of the CLI's tables: ``2026-12-27 07:10:29Z``, or ``-``."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def file_stamp(value: datetime) -> str:
    """A compact UTC stamp for file names: ``20261227T071029.000000Z``."""
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
