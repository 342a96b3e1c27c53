"""Pure scheduling decisions of the agent: backoff, "expiring", runaway guard, revocation, wake time.

Nothing here reads the clock or draws random numbers on its own: ``now`` and a
:class:`random.Random` are passed in, so the unit tests drive every decision with fixed values
and never sleep. (The renewal time itself is :func:`vault_bridge.decisions.renewal.renewal_time`.)
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from vault_bridge.models.certificates import CertState

#: First retry after a failure; each further failure doubles it ...
INITIAL_BACKOFF = timedelta(seconds=10)
#: ... up to this cap ...
MAX_BACKOFF = timedelta(minutes=10)
#: ... which shrinks to this fraction of the certificate's remaining lifetime ...
CAP_FRACTION = 0.1
#: ... but never below this floor.
MIN_BACKOFF_CAP = timedelta(seconds=10)
#: A delay is drawn from [1 - JITTER, 1] times the nominal one (never above the cap).
JITTER = 0.2
#: A certificate with less than this fraction of its lifetime left is "expiring".
EXPIRING_FRACTION = 0.1
#: The runaway guard counts the certificates issued in this window.
ISSUE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Backoff:
    """The retry state of one thing that can fail (a certificate, a cluster, the token)."""

    failures: int = 0
    next_attempt: datetime | None = None
    last_error: str | None = None

    def allows(self, now: datetime) -> bool:
        """Whether an attempt may be made at ``now``."""
        return self.next_attempt is None or now >= self.next_attempt


def backoff_cap(now: datetime, not_after: datetime | None) -> timedelta:
    """The longest wait between two attempts: 10 minutes, at most a tenth of the time the
    certificate has left (so an outage never outlasts it unnoticed), at least 10 seconds."""
    if not_after is None:
        return MAX_BACKOFF
    remaining: timedelta = not_after - now
    cap: timedelta = remaining * CAP_FRACTION
    if cap > MAX_BACKOFF:
        return MAX_BACKOFF
    return cap if cap > MIN_BACKOFF_CAP else MIN_BACKOFF_CAP


def backoff_delay(
    failures: int, *, now: datetime, not_after: datetime | None, rng: random.Random
) -> timedelta:
    """How long to wait after the ``failures``-th failure in a row (1 = the first one)."""
    if failures < 1:
        return timedelta(0)
    nominal = INITIAL_BACKOFF * (1 << min(failures - 1, 20))
    base = min(backoff_cap(now, not_after), nominal)
    return base * (1 - JITTER * rng.random())


def after_failure(
    backoff: Backoff,
    *,
    now: datetime,
    not_after: datetime | None,
    rng: random.Random,
    error: str,
) -> Backoff:
    """The backoff state after one more failure at ``now``."""
    failures = backoff.failures + 1
    delay = backoff_delay(failures, now=now, not_after=not_after, rng=rng)
    return Backoff(failures=failures, next_attempt=now + delay, last_error=error)


def max_attempts(window: timedelta, *, not_after: datetime | None, start: datetime) -> int:
    """The most attempts the backoff allows in ``window`` after a first failure at ``start``
    (the bound an outage test checks; the first attempt included)."""
    attempts, failures, at = 1, 1, start
    while True:
        nominal = min(INITIAL_BACKOFF * (1 << min(failures - 1, 20)), backoff_cap(at, not_after))
        at += nominal * (1 - JITTER)  # the shortest delay the jitter can draw
        if at > start + window:
            return attempts
        attempts += 1
        failures += 1


# -- certificates ----------------------------------------------------------------------------


def is_expiring(not_before: datetime | None, not_after: datetime | None, now: datetime) -> bool:
    """Less than 10% of the lifetime left (or expired)."""
    if not_before is None or not_after is None or not_after <= not_before:
        return False
    return not_after - now < (not_after - not_before) * EXPIRING_FRACTION


def recent_issues(issued_at: Iterable[datetime], now: datetime) -> list[datetime]:
    """The issue times inside the runaway guard's window, oldest first."""
    return sorted(t for t in issued_at if now - t < ISSUE_WINDOW)


def runaway_until(issued_at: Sequence[datetime], now: datetime, limit: int) -> datetime | None:
    """``None`` when one more certificate may be issued now, else when the next one may be
    (``limit`` certificates per :data:`ISSUE_WINDOW` for one cluster/name)."""
    recent = recent_issues(issued_at, now)
    if len(recent) < limit:
        return None
    return recent[len(recent) - limit] + ISSUE_WINDOW


@dataclass(frozen=True)
class Tracked:
    """What the agent knows of one configured certificate for scheduling."""

    cluster: str
    name: str
    state: CertState | None  # None: not read yet, or its cluster did not answer
    renew_at: datetime | None
    backoff: Backoff = Backoff()
    blocked_until: datetime | None = None  # runaway guard or a permission error

    @property
    def key(self) -> tuple[str, str]:
        return (self.cluster, self.name)


def attempt_at(cert: Tracked, now: datetime, *, replace_foreign: bool) -> datetime | None:
    """When a pass should next act on ``cert``; ``None`` when never (a foreign certificate
    that is only reported)."""
    if cert.state == "foreign" and not replace_foreign:
        return None
    # a due certificate's renew_at is when its maintenance window opens (or now)
    ours = cert.state in ("ok", "due") and cert.renew_at is not None
    base = cert.renew_at if ours and cert.renew_at is not None else now
    times = [base]
    if cert.backoff.next_attempt is not None:
        times.append(cert.backoff.next_attempt)
    if cert.blocked_until is not None:
        times.append(cert.blocked_until)
    return max(times)


def allowed_now(cert: Tracked, now: datetime) -> bool:
    """Neither backing off nor blocked: a pass may issue this certificate if it is due."""
    blocked = cert.blocked_until is not None and now < cert.blocked_until
    return cert.backoff.allows(now) and not blocked


# -- revocation ------------------------------------------------------------------------------

RevocationDecision = Literal["revoke", "wait", "drop"]


def revocation_decision(
    *,
    not_after: datetime,
    revoke_after: datetime,
    replacement_done: bool,
    backoff: Backoff,
    now: datetime,
) -> RevocationDecision:
    """What to do with a superseded certificate: never revoke one that has expired (drop it),
    nor before the grace period has passed and its replacement is installed with its
    follow-ups done."""
    if not_after <= now:
        return "drop"
    if replacement_done and now >= revoke_after and backoff.allows(now):
        return "revoke"
    return "wait"


# -- waking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wake:
    at: datetime
    reason: str


def next_wake(now: datetime, candidates: Iterable[tuple[datetime | None, str]]) -> Wake:
    """The earliest of the candidate times (never before ``now``)."""
    best: Wake | None = None
    for at, reason in candidates:
        if at is None:
            continue
        if best is None or at < best.at:
            best = Wake(at, reason)
    if best is None:
        raise ValueError("no candidate wake time")
    return replace(best, at=max(best.at, now))
