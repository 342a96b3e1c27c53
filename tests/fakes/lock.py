"""The follow-up lock in memory: records when it is taken and released, and can be held by
"someone else"."""

from __future__ import annotations


class FakeLock:
    """Implements :class:`vault_bridge.rotation.followup_jobs.Lock`; never waits."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.events: list[str] = events if events is not None else []
        self.held_elsewhere = False
        self.held = False
        self.acquired = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.held_elsewhere or self.held:
            self.events.append("lock refused")
            return False
        self.held = True
        self.acquired += 1
        self.events.append("lock acquired")
        return True

    def release(self) -> None:
        if not self.held:
            raise RuntimeError("release of a lock not held")
        self.held = False
        self.events.append("lock released")
