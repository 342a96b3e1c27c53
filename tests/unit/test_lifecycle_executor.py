"""The executor with in-memory fakes: issuer_ref reaches Vault, a revoked certificate is
replaced, a renewal waiting for its window is not attempted, and the trust follows the mount."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from tests.fakes.world import MOUNT, World, make_settings
from vault_bridge.config.windows import DAYS


def world(tmp_path: Path, **cluster: object) -> World:
    return World(
        make_settings(tmp_path / "state", ("east",), ("cm",), cluster_keys={"east": cluster})
    )


def test_issuer_ref_reaches_vault(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", ("east",), ("cm",))
    cluster = settings.clusters[0]
    spec = replace(cluster.certificates[0], issuer_ref="int-2026")
    w = World(replace(settings, clusters=(replace(cluster, certificates=(spec,)),)))
    assert w.rotator().run_once().ok
    assert w.vault.issuer_refs == ["int-2026"]


def test_a_revoked_certificate_is_replaced_at_once(tmp_path: Path) -> None:
    w = world(tmp_path)
    rotator = w.rotator()
    assert rotator.run_once().ok
    (status,) = rotator.status().statuses
    assert status.state == "ok" and status.serial is not None
    w.vault.revoked.append((MOUNT, status.serial))
    (status,) = rotator.status().statuses
    assert status.state == "revoked"
    result = rotator.run_once()
    assert result.ok and [o.name for o in result.outcomes] == ["cm"]


def test_a_renewal_waiting_for_its_window_is_not_attempted(tmp_path: Path) -> None:
    start = World(make_settings(tmp_path / "probe")).clock()
    day23 = start + timedelta(days=23)
    window = f"{DAYS[day23.weekday()]} 03:00-03:30 UTC"  # weekly: day 16, then about day 23
    w = world(tmp_path, maintenance_window=window)
    rotator = w.rotator()
    assert rotator.run_once().ok  # missing: at once, whatever the window
    (status,) = rotator.status().statuses
    opening = status.renew_at
    assert opening is not None and status.window == window
    assert opening.date() == day23.date() and (opening.hour, opening.minute) == (3, 0)
    w.clock.advance(timedelta(days=20, hours=12))  # past its renewal time (at most day 20)
    (status,) = rotator.status().statuses
    assert status.state == "due" and status.held(w.clock())
    signs = len(w.vault.issuer_refs)
    assert rotator.run_once().outcomes == [] and len(w.vault.issuer_refs) == signs
    w.clock.advance(opening - w.clock() + timedelta(minutes=1))
    result = rotator.run_once()
    assert [o.name for o in result.outcomes] == ["cm"] and result.ok
