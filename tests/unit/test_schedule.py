"""The agent's pure decisions, driven by an injected clock and random generator (no sleeping)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import OfflineCA
from vault_bridge.config.settings import CertSpec
from vault_bridge.decisions.renewal import renewal_time
from vault_bridge.decisions.schedule import (
    Backoff,
    Tracked,
    after_failure,
    allowed_now,
    attempt_at,
    backoff_cap,
    backoff_delay,
    is_expiring,
    max_attempts,
    next_wake,
    revocation_decision,
    runaway_until,
)
from vault_bridge.models.certificates import CertificateInfo, CertName

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)


class FixedRandom(random.Random):
    """random() always answers ``value``: the two ends of the jitter."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


FAR = T0 + timedelta(days=30)


@pytest.mark.parametrize(
    ("failures", "nominal"),
    [(1, 10), (2, 20), (3, 40), (4, 80), (5, 160), (6, 320), (7, 600), (8, 600), (60, 600)],
)
def test_backoff_doubles_from_10s_to_10min(failures: int, nominal: int) -> None:
    longest = backoff_delay(failures, now=T0, not_after=FAR, rng=FixedRandom(0.0))
    shortest = backoff_delay(failures, now=T0, not_after=FAR, rng=FixedRandom(0.999999))
    assert longest == nominal * S
    assert shortest == pytest.approx(nominal * S * 0.8, abs=timedelta(milliseconds=10))


def test_jitter_spreads_retries() -> None:
    rng = random.Random(7)
    delays = {backoff_delay(3, now=T0, not_after=FAR, rng=rng) for _ in range(50)}
    assert len(delays) > 40
    assert all(32 * S <= d <= 40 * S for d in delays)


@pytest.mark.parametrize(
    ("remaining", "cap"),
    [
        (None, 600 * S),  # nothing known: the plain cap
        (timedelta(days=2), 600 * S),
        (timedelta(minutes=30), 180 * S),  # a tenth of what is left
        (timedelta(minutes=5), 30 * S),
        (timedelta(seconds=60), 10 * S),  # never below the 10 s floor
        (timedelta(seconds=-5), 10 * S),  # expired
    ],
)
def test_cap_shrinks_as_expiry_nears(remaining: timedelta | None, cap: timedelta) -> None:
    not_after = T0 + remaining if remaining is not None else None
    assert backoff_cap(T0, not_after) == cap
    assert backoff_delay(12, now=T0, not_after=not_after, rng=FixedRandom(0.0)) == cap


def test_after_failure_counts_and_schedules() -> None:
    first = after_failure(Backoff(), now=T0, not_after=FAR, rng=FixedRandom(0.0), error="down")
    assert first == Backoff(1, T0 + 10 * S, "down")
    assert not first.allows(T0 + 9 * S) and first.allows(T0 + 10 * S)
    second = after_failure(first, now=T0 + 10 * S, not_after=FAR, rng=FixedRandom(0.0), error="x")
    assert second.failures == 2 and second.next_attempt == T0 + 30 * S
    assert Backoff().allows(T0)


def test_an_outage_never_outlasts_the_certificate_unnoticed() -> None:
    """Vault down from the renewal time to expiry: attempts keep coming at least every
    max(10 s, a tenth of the time left) nominal, so the last one is close to expiry."""
    lifetime = timedelta(hours=24)
    not_after = T0 + lifetime
    clock = T0 + lifetime * 2 / 3
    backoff = Backoff()
    attempts = [clock]
    rng = random.Random(1)
    while True:
        backoff = after_failure(backoff, now=clock, not_after=not_after, rng=rng, error="down")
        assert backoff.next_attempt is not None
        gap = backoff.next_attempt - clock
        assert gap <= max(10 * S, (not_after - clock) / 10)
        clock = backoff.next_attempt
        if clock >= not_after:
            break
        attempts.append(clock)
    assert not_after - attempts[-1] <= 10 * S
    # the whole 8 h outage costs a few hundred requests, not a storm
    assert 50 < len(attempts) < 400


def test_max_attempts_bounds_any_jitter() -> None:
    window = timedelta(minutes=5)
    bound = max_attempts(window, not_after=FAR, start=T0)
    for seed in range(20):
        rng = random.Random(seed)
        clock, backoff, count = T0, Backoff(), 1
        while True:
            backoff = after_failure(backoff, now=clock, not_after=FAR, rng=rng, error="x")
            assert backoff.next_attempt is not None
            clock = backoff.next_attempt
            if clock > T0 + window:
                break
            count += 1
        assert count <= bound
    assert bound == 6  # 0, 8, 24, 56, 120, 248 s at the shortest jitter


@pytest.mark.parametrize(
    ("elapsed", "expiring"),
    [
        (timedelta(0), False),
        (timedelta(days=26), False),
        (timedelta(days=27, hours=1), True),
        (timedelta(days=31), True),
    ],
)
def test_expiring_below_ten_percent(elapsed: timedelta, expiring: bool) -> None:
    assert is_expiring(T0, T0 + timedelta(days=30), T0 + elapsed) is expiring


def test_expiring_needs_dates() -> None:
    assert not is_expiring(None, T0, T0)
    assert not is_expiring(T0, T0, T0)


def test_runaway_guard() -> None:
    issued = [T0 + timedelta(minutes=m) for m in (0, 5, 10, 15, 20)]
    assert runaway_until(issued, T0 + timedelta(minutes=30), 6) is None
    issued.append(T0 + timedelta(minutes=25))
    # six in the last hour: the next one when the oldest of them leaves the window
    assert runaway_until(issued, T0 + timedelta(minutes=30), 6) == T0 + timedelta(hours=1)
    assert runaway_until(issued, T0 + timedelta(hours=1), 6) is None
    old = [T0 - timedelta(hours=2)] * 10
    assert runaway_until(old, T0, 6) is None
    assert runaway_until([T0], T0, 1) == T0 + timedelta(hours=1)


@pytest.mark.parametrize(
    ("now", "done", "backoff", "decision"),
    [
        (T0 + timedelta(minutes=30), True, Backoff(), "wait"),  # grace not over
        (T0 + timedelta(hours=1), True, Backoff(), "revoke"),
        (T0 + timedelta(hours=1), False, Backoff(), "wait"),  # follow-ups still pending
        (T0 + timedelta(hours=1), True, Backoff(1, T0 + timedelta(hours=2)), "wait"),
        (T0 + timedelta(days=3), True, Backoff(), "drop"),  # expired: never revoked
    ],
)
def test_revocation_decision(now: datetime, done: bool, backoff: Backoff, decision: str) -> None:
    assert (
        revocation_decision(
            not_after=T0 + timedelta(days=2),
            revoke_after=T0 + timedelta(hours=1),
            replacement_done=done,
            backoff=backoff,
            now=now,
        )
        == decision
    )


RENEW = T0 + timedelta(days=20)


@pytest.mark.parametrize(
    ("cert", "when"),
    [
        (Tracked("east", "proxy", "ok", RENEW), RENEW),
        (Tracked("east", "proxy", "due", None), T0),
        (Tracked("east", "proxy", "missing", None), T0),
        (Tracked("east", "proxy", None, None), T0),  # never read: at once
        (Tracked("east", "proxy", "due", None, Backoff(2, T0 + 20 * S)), T0 + 20 * S),
        (
            Tracked("east", "proxy", "expired", None, blocked_until=T0 + timedelta(hours=1)),
            T0 + timedelta(hours=1),
        ),
        (Tracked("east", "proxy", "foreign", None), None),  # only reported
    ],
)
def test_attempt_at(cert: Tracked, when: datetime | None) -> None:
    assert attempt_at(cert, T0, replace_foreign=False) == when


def test_foreign_is_replaced_at_once_when_allowed() -> None:
    assert attempt_at(Tracked("e", "cm", "foreign", None), T0, replace_foreign=True) == T0


def test_allowed_now() -> None:
    assert allowed_now(Tracked("e", "cm", "due", None), T0)
    assert not allowed_now(Tracked("e", "cm", "due", None, Backoff(1, T0 + S)), T0)
    assert not allowed_now(Tracked("e", "cm", "due", None, blocked_until=T0 + S), T0)
    assert allowed_now(Tracked("e", "cm", "due", None, blocked_until=T0 - S), T0)


def test_next_wake_is_the_earliest_and_never_in_the_past() -> None:
    wake = next_wake(T0, [(T0 + 60 * S, "resync"), (None, "nothing"), (T0 + 5 * S, "proxy")])
    assert (wake.at, wake.reason) == (T0 + 5 * S, "proxy")
    assert next_wake(T0, [(T0 - 5 * S, "late")]).at == T0
    with pytest.raises(ValueError):
        next_wake(T0, [(None, "x")])


def test_renewal_time_drives_the_wake(test_ca: OfflineCA) -> None:
    """The planner's renewal time (2/3 minus a stable jitter) is when the agent wakes."""
    pem, _ = test_ca.leaf(not_before=T0, lifetime=timedelta(days=30))
    info = CertificateInfo.from_pem(pem)
    spec = CertSpec(
        cluster="east",
        name=CertName.PROXY,
        role="r",
        common_name="c",
        alt_names=(),
        ip_sans=(),
        pki_mount="pki",
        mode="sign",
        key_type="ec",
        key_bits=256,
        ttl=timedelta(hours=720),
        renew_at=0.667,
        renew_before=None,
    )
    due = renewal_time(spec, info)
    assert T0 + timedelta(days=30) * (0.667 - 0.05) <= due <= T0 + timedelta(days=30) * 0.667
    assert renewal_time(spec, info) == due  # stable: the same after a restart
    cert = Tracked("east", "proxy", "ok", due)
    wake = next_wake(
        T0,
        [
            (attempt_at(cert, T0, replace_foreign=True), "proxy"),
            (T0 + timedelta(minutes=10), "resync"),
        ],
    )
    assert wake.reason == "resync"
    later = due - timedelta(minutes=1)
    wake = next_wake(
        later,
        [
            (attempt_at(cert, later, replace_foreign=True), "proxy"),
            (later + timedelta(minutes=10), "resync"),
        ],
    )
    assert (wake.at, wake.reason) == (due, "proxy")
