from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import OfflineCA, make_ca
from vault_bridge.config.settings import CertSpec
from vault_bridge.decisions.install import install_batches
from vault_bridge.decisions.renewal import classify, jitter, next_deadline, plan, renewal_time
from vault_bridge.models.certificates import CertName, InstalledCertificate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(
    name: str = "proxy", renew_at: float | None = 0.667, renew_before: timedelta | None = None
) -> CertSpec:
    return CertSpec(
        cluster="east",
        name=CertName(name),
        role="r",
        common_name="c",
        alt_names=(),
        ip_sans=(),
        pki_mount="pki",
        mode="sign",
        key_type="ec",
        key_bits=256,
        ttl=timedelta(hours=720),
        renew_at=renew_at,
        renew_before=renew_before,
    )


def installed(ca: OfflineCA, lifetime: timedelta = timedelta(days=30)) -> InstalledCertificate:
    pem, _ = ca.leaf(not_before=T0, lifetime=lifetime)
    return InstalledCertificate.from_pem("proxy", pem)


@pytest.mark.parametrize(
    ("offset", "state"),
    [
        (timedelta(days=1), "ok"),
        (timedelta(days=18), "ok"),  # before 2/3 minus at most 5% jitter (18.5 days)
        (timedelta(days=20, hours=1), "due"),  # past 2/3 of 30 days
        (timedelta(days=31), "expired"),
    ],
)
def test_classify_by_age(test_ca: OfflineCA, offset: timedelta, state: str) -> None:
    cert = installed(test_ca)
    status = classify(spec(), cert, [test_ca.cert], T0 + offset)
    assert status.state == state


def test_missing_and_foreign(test_ca: OfflineCA) -> None:
    assert classify(spec(), None, [test_ca.cert], T0).state == "missing"
    other = make_ca("Other CA")
    status = classify(spec(), installed(other), [test_ca.cert], T0 + timedelta(days=1))
    assert status.state == "foreign"
    assert status.renew_at == T0 + timedelta(days=1)  # due at once


def test_same_subject_different_key_is_foreign(test_ca: OfflineCA) -> None:
    impostor = make_ca("Test CA")  # same DN as test_ca, another key
    status = classify(spec(), installed(impostor), [test_ca.cert], T0 + timedelta(days=1))
    assert status.state == "foreign"


def test_renewal_time_fraction_and_before(test_ca: OfflineCA) -> None:
    info = installed(test_ca).info
    lifetime = info.not_after - info.not_before
    j = jitter("east", "proxy", info.serial, lifetime)
    assert timedelta(0) <= j <= lifetime * 0.05
    assert renewal_time(spec(), info) == info.not_before + lifetime * 0.667 - j
    before = spec(renew_at=None, renew_before=timedelta(days=10))
    assert renewal_time(before, info) == info.not_after - timedelta(days=10) - j


def test_jitter_is_stable_and_differs_per_certificate() -> None:
    life = timedelta(days=30)
    assert jitter("east", "proxy", "01:02", life) == jitter("east", "proxy", "01:02", life)
    values = {jitter("east", name, "01:02", life) for name in ("cm", "api", "proxy", "syncer")}
    assert len(values) == 4


def test_plan_force_and_replace_foreign(test_ca: OfflineCA) -> None:
    now = T0 + timedelta(days=1)
    ok = classify(spec("proxy"), installed(test_ca), [test_ca.cert], now)
    foreign = classify(spec("cm"), installed(make_ca("X")), [test_ca.cert], now)
    missing = classify(spec("api"), None, [test_ca.cert], now)
    actions = plan([ok, foreign, missing])
    assert [(a.name, a.reason) for a in actions] == [("cm", "foreign"), ("api", "missing")]
    assert [a.name for a in plan([ok, foreign], replace_foreign=False)] == []
    assert [(a.name, a.reason) for a in plan([ok], force=[("east", "proxy")])] == [
        ("proxy", "forced")
    ]
    assert next_deadline([ok, foreign]) == ok.renew_at


@pytest.mark.parametrize(
    ("version", "names", "expected"),
    [
        ((7, 22, 2, 14), ["cm", "proxy"], [("bulk", ("cm", "proxy"))]),
        (
            (7, 22, 2),
            ["proxy", "ccs_internode_encryption", "api"],
            [("bulk", ("proxy", "api")), ("bulk", ("ccs_internode_encryption",))],
        ),
        ((7, 8, 4), ["cm", "proxy"], [("update_cert", ("cm",)), ("update_cert", ("proxy",))]),
        ((7, 22, 0, 99), ["api"], [("update_cert", ("api",))]),
    ],
)
def test_install_batches(
    version: tuple[int, ...], names: list[str], expected: list[tuple[str, tuple[str, ...]]]
) -> None:
    assert [(b.endpoint, b.names) for b in install_batches(names, version)] == expected
