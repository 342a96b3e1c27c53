"""Configuration of the PKI lifecycle keys: issuer_ref, issuer_migration, maintenance windows,
window_safety_margin, overdue_after (where each may be set, and one line per mistake)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_config import doc
from vault_bridge.config.loading import parse_config
from vault_bridge.errors import ConfigError


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text("s3cret\n")
    return path


def test_lifecycle_defaults(password_file: Path) -> None:
    spec = parse_config(doc(password_file)).clusters[0].certificates[0]
    assert spec.issuer_ref is None and spec.issuer_migration is None
    assert spec.maintenance_windows == ()
    assert spec.window_safety_margin == pytest.approx(0.2)
    assert spec.overdue_after == pytest.approx(0.05)


def test_certificate_over_cluster_over_defaults(password_file: Path) -> None:
    data = doc(password_file, maintenance_window="Sun 01:00-02:00 UTC", window_safety_margin=0.3)
    data["defaults"] = {
        "maintenance_window": ["Sat 02:00-04:00 UTC", "Wed 03:00-04:00 Europe/Berlin"],
        "window_safety_margin": 0.1,
        "issuer_ref": "int-2026",
        "issuer_migration": "72h",
        "overdue_after": 0.1,
    }
    data["clusters"][0]["certificates"]["syncer"] = {
        "role": "r",
        "common_name": "s.example.com",
        "maintenance_window": "Mon-Fri 22:00-23:00 America/New_York",
        "issuer_ref": "default",
    }
    proxy, syncer = parse_config(data).clusters[0].certificates
    assert [w.text for w in proxy.maintenance_windows] == ["Sun 01:00-02:00 UTC"]
    assert proxy.window_safety_margin == pytest.approx(0.3)
    assert (proxy.issuer_ref, proxy.issuer_migration) == ("int-2026", timedelta(hours=72))
    assert proxy.overdue_after == pytest.approx(0.1)
    assert [w.zone for w in syncer.maintenance_windows] == ["America/New_York"]
    assert syncer.issuer_ref == "default"


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("defaults", "maintenance_window", "Sat 02:00-04:00", "defaults.maintenance_window: "),
        (
            "cluster",
            "maintenance_window",
            ["Sat 02:00-04:00 Nowhere/X"],
            "clusters[0].maintenance_window",
        ),
        (
            "cert",
            "maintenance_window",
            "Sun 2-4 UTC",
            "clusters[0].certificates.proxy.maintenance_window",
        ),
        ("defaults", "window_safety_margin", 1.5, "defaults.window_safety_margin: "),
        ("cert", "overdue_after", 0, "clusters[0].certificates.proxy.overdue_after: "),
        ("defaults", "issuer_ref", "a/b", "defaults.issuer_ref: expected an issuer ID or name"),
        ("cert", "issuer_migration", "soon", "clusters[0].certificates.proxy.issuer_migration: "),
        (
            "defaults",
            "maintenance_windows",
            "Sat 02:00-04:00 UTC",
            "did you mean 'maintenance_window'",
        ),
    ],
)
def test_lifecycle_errors_name_the_key(
    password_file: Path, where: str, key: str, value: Any, message: str
) -> None:
    data = doc(password_file)
    if where == "defaults":
        data["defaults"] = {key: value}
    elif where == "cluster":
        data["clusters"][0][key] = value
    else:
        data["clusters"][0]["certificates"]["proxy"][key] = value
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    text = str(info.value)
    assert message in text and "\n" not in text
