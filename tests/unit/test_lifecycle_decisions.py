"""Pure decisions of the PKI lifecycle: ours = any issuer of the mount, revoked, issuer_migration,
issuer health warnings, maintenance windows in the classification and the plan, overdue."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from tests.conftest import OfflineCA, make_ca
from tests.unit.test_planner import installed, spec
from vault_bridge.config.windows import parse_windows
from vault_bridge.decisions.renewal import classify, next_deadline, plan
from vault_bridge.models.vault import MountIssuers, PkiIssuer

T0 = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday


def issuer(ca: OfflineCA, issuer_id: str, name: str = "") -> PkiIssuer:
    return PkiIssuer.from_vault(
        "pki", {"certificate": ca.pem, "issuer_id": issuer_id, "issuer_name": name}, [ca.pem]
    )


def mount(*issuers: PkiIssuer, default: str) -> MountIssuers:
    return MountIssuers("pki", issuers, default)


def test_a_certificate_of_a_previous_issuer_stays_ok_with_a_warning() -> None:
    old, new = make_ca("Old Int"), make_ca("New Int")
    issuers = mount(
        issuer(old, "id-old", "int-2025"), issuer(new, "id-new", "int-2026"), default="id-new"
    )
    status = classify(spec(), installed(old), issuers, T0 + timedelta(days=1))
    assert status.state == "ok" and status.signed_by == "int-2025" and status.issuer_outdated
    assert status.warnings == (
        "signed by issuer int-2025, not the mount's default int-2026 (moves to it at renewal)",
    )
    # the same certificate against the default alone is foreign (the old behaviour's bug)
    only_new = mount(issuer(new, "id-new"), default="id-new")
    assert classify(spec(), installed(old), only_new, T0 + timedelta(days=1)).state == "foreign"


def test_revoked_is_not_ok_and_is_planned_at_once(test_ca: OfflineCA) -> None:
    issuers = mount(issuer(test_ca, "a"), default="a")
    status = classify(spec(), installed(test_ca), issuers, T0 + timedelta(days=1), revoked=True)
    assert status.state == "revoked"
    assert [a.reason for a in plan([status], replace_foreign=False, now=T0)] == ["revoked"]


def test_issuer_migration_moves_earlier_within_the_window() -> None:
    old, new = make_ca("Old Int"), make_ca("New Int")
    issuers = mount(issuer(old, "id-old"), issuer(new, "id-new"), default="id-new")
    since = T0 + timedelta(days=2)
    window = timedelta(hours=72)
    moved = [
        classify(
            replace(spec(), issuer_migration=window, cluster=f"c{i}"),
            installed(old),
            issuers,
            since,
            migration_since=since,
        ).renew_at
        for i in range(8)
    ]
    assert all(t is not None and since <= t < since + window for t in moved)
    assert len(set(moved)) == 8  # jittered per certificate
    # without issuer_migration: the normal renewal time (2/3 of 30 days, minus up to 5%)
    normal = classify(spec(), installed(old), issuers, since, migration_since=since).renew_at
    assert normal is not None and normal > T0 + timedelta(days=18)
    # a certificate already on the new issuer does not move early
    current = classify(
        replace(spec(), issuer_migration=window),
        installed(new),
        issuers,
        since,
        migration_since=since,
    ).renew_at
    assert current is not None and current > T0 + timedelta(days=18)


def test_issuer_ref_is_the_target_and_its_expiry_is_warned() -> None:
    short = make_ca("Short Int")
    target = issuer(short, "id-s", "short")
    issuers = mount(target, default="id-s")
    later = target.not_after - timedelta(days=10)  # 10 days left, less than the 720h lifetime
    cert = installed(short, lifetime=timedelta(days=3700))
    status = classify(spec(), cert, issuers, later)
    assert status.issuer_expiring
    assert any("sooner than one lifetime (720h)" in w for w in status.warnings)
    assert not classify(spec(), cert, issuers, later - timedelta(days=40)).issuer_expiring
    chosen = classify(replace(spec(), issuer_ref="nothing-here"), installed(short), issuers, T0)
    assert not chosen.issuer_expiring and chosen.warnings == ()  # unknown ref: validate says so


def test_due_certificate_waits_for_its_window_and_the_plan_skips_it(test_ca: OfflineCA) -> None:
    windows = parse_windows("Sat 02:00-04:00 UTC")
    s = replace(spec(), maintenance_windows=windows)
    due_at = T0 + timedelta(days=20, hours=1)  # 2026-01-21, a Wednesday
    status = classify(s, installed(test_ca), [test_ca.cert], due_at)
    saturday = datetime(2026, 1, 24, 2, 0, tzinfo=UTC)
    assert status.state == "due" and status.renew_at == saturday and status.held(due_at)
    assert status.window == "Sat 02:00-04:00 UTC" and not status.window_override
    assert plan([status], now=due_at) == []
    assert next_deadline([status]) == saturday
    inside = classify(s, installed(test_ca), [test_ca.cert], saturday + timedelta(minutes=5))
    (action,) = plan([inside], now=saturday + timedelta(minutes=5))
    assert action.reason == "due, in maintenance window Sat 02:00-04:00 UTC"
    # forced (the operator's issue) is never held
    assert [a.reason for a in plan([status], force=[("east", "proxy")], now=due_at)] == ["forced"]


def test_missing_and_foreign_do_not_wait_for_a_window(test_ca: OfflineCA) -> None:
    s = replace(spec(), maintenance_windows=parse_windows("Sat 02:00-04:00 UTC"))
    now = T0 + timedelta(days=1)
    other = make_ca("Other")
    statuses = [
        classify(s, None, [test_ca.cert], now),
        classify(s, installed(other), [test_ca.cert], now),
    ]
    assert [a.reason for a in plan(statuses, now=now)] == ["missing", "foreign"]


def test_safety_margin_override_is_marked(test_ca: OfflineCA) -> None:
    # the only window is Sunday 03:00; margin 0.3 of 30 days: the deadline is day 21
    s = replace(
        spec(), maintenance_windows=parse_windows("Sun 03:00-04:00 UTC"), window_safety_margin=0.3
    )
    cert = installed(test_ca)
    day21 = T0 + timedelta(days=21, minutes=1)  # 2026-01-22, Thursday
    status = classify(s, cert, [test_ca.cert], day21)
    assert status.state == "due" and status.window_override and not status.held(day21)
    (action,) = plan([status], now=day21)
    assert "safety margin" in action.reason


def test_overdue_after_a_fraction_of_the_lifetime(test_ca: OfflineCA) -> None:
    cert = installed(test_ca)
    status = classify(spec(), cert, [test_ca.cert], T0 + timedelta(days=20, hours=1))
    assert status.renew_at is not None and status.overdue_at == status.renew_at + timedelta(
        days=1.5
    )
    assert not status.overdue(status.renew_at + timedelta(days=1))
    assert status.overdue(status.renew_at + timedelta(days=1.6))
    wider = classify(replace(spec(), overdue_after=0.1), cert, [test_ca.cert], T0)
    assert wider.renew_at is not None and wider.overdue_at == wider.renew_at + timedelta(days=3)
