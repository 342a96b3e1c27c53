"""The one lock-and-poll loop: an exclusive ``flock`` on an open file, waited for within a bound.

``flock`` cannot wait with a timeout, so a bounded wait is a loop of non-blocking tries. The
state directory's lock (:meth:`vault_bridge.state.store.StateDir.locked`) and the follow-ups'
lock (:class:`vault_bridge.rotation.followup_jobs.FollowUpLock`) both take it here. The lock goes
with the descriptor: closing it, or the process ending, releases it.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable


def flock_within(
    fd: int,
    wait: float | None,
    *,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """``flock(fd, LOCK_EX)``, tried every ``poll`` seconds for up to ``wait`` seconds
    (0: one try; None: until it is taken). True once held, False when the wait ran out."""
    deadline = None if wait is None else clock() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if deadline is not None and clock() >= deadline:
                return False
            sleep(poll)


def unlock(fd: int) -> None:
    """Release the ``flock`` on ``fd`` (the descriptor stays open)."""
    fcntl.flock(fd, fcntl.LOCK_UN)
