"""A clock that moves only when told to, or when something sleeps on it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """Wall time (:meth:`now`, or calling it) and monotonic time (:meth:`monotonic`) that move
    together; :meth:`sleep` records the wait and advances both at once. Thread-safe: the
    follow-ups' jobs run on threads of their own."""

    def __init__(self, start: datetime = T0) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._elapsed = 0.0
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._elapsed

    def advance(self, seconds: float | timedelta) -> None:
        delta = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        with self._lock:
            self._now += delta
            self._elapsed += delta.total_seconds()

    def sleep(self, seconds: float, /) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        with self._lock:
            self.slept.append(seconds)
        self.advance(seconds)
