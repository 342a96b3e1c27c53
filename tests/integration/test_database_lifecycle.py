"""A database's own certificate in the lifecycle of the cluster certificates, against OpenBao
and the simulator: the intent journal (a pass killed between issue and install), the
revocation of a superseded certificate after revoke_grace, and the runaway guard."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

from tests.integration.database_helpers import database_doc
from vault_bridge.agent.revocation import revoke_due
from vault_bridge.config.loading import parse_config
from vault_bridge.config.settings import Settings
from vault_bridge.models.certificates import CertificateInfo
from vault_bridge.rotation.app import build
from vault_bridge.rotation.results import Change
from vault_bridge.state.journal import IntentJournal
from vault_bridge.state.store import StateDir

pytestmark = pytest.mark.usefixtures("lab_env")
KEY = ("east", "bdb:orders")


class Killed(BaseException):
    """The process died here (nothing catches it, like a kill)."""


def _settings(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    west: SimulatedCluster,
    tmp: Path,
    endpoint: str,
    **agent: Any,
) -> Settings:
    return parse_config(database_doc(openbao, pki, east, west, tmp, endpoint, **agent))


def _journal(settings: Settings, tmp: Path, clock: Any) -> IntentJournal:
    (tmp / "state").mkdir(mode=0o700, exist_ok=True)
    keeper = IntentJournal(StateDir(tmp / "state"), settings, clock=clock)
    keeper.load()
    return keeper


def _revoked(openbao: OpenBaoServer, mount: str, serial: str) -> bool:
    data = openbao.client().secrets.pki.read_certificate(serial=serial, mount_point=mount)["data"]
    return int(data.get("revocation_time") or 0) > 0


def _revoke(keeper: IntentJournal, app: Any) -> None:
    revoke_due(
        keeper, app.vault, enabled=True, rng=random.Random(1), blocked_for=timedelta(minutes=5)
    )


def test_killed_before_the_install_the_certificate_is_revoked_at_the_next_start(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    pair: tuple[SimulatedCluster, SimulatedCluster],
    tmp_path: Path,
) -> None:
    east, west = pair
    orders = east.add_bdb("orders")
    endpoint = east.open_bdb_endpoint(orders)
    settings = _settings(openbao, pki, east, west, tmp_path, endpoint)
    keeper = _journal(settings, tmp_path, lambda: datetime.now(UTC))
    real = keeper.before_install

    def before_install_then_die(cluster: str, changes: Sequence[Change]) -> None:
        real(cluster, changes)  # the intent "installing" is saved ...
        raise Killed  # ... and the process dies before the request goes out

    keeper.before_install = before_install_then_die  # type: ignore[method-assign]
    with build(settings, sleep=lambda s: None, hooks=keeper) as app, pytest.raises(Killed):
        app.rotator.run_once(only={KEY})
    assert east.db_certs.get(orders) is None  # nothing was installed

    again = _journal(settings, tmp_path, lambda: datetime.now(UTC))
    assert again.unresolved() == {KEY}
    intent = again.state.journal[KEY] if again.state else None
    assert intent is not None and intent.phase == "installing"
    with build(settings, sleep=lambda s: None, hooks=again) as app:
        assert again.replay(app.rotator) == {}
        assert again.state is not None and not again.state.journal
        [orphan] = again.state.superseded
        assert (orphan.name, orphan.serial, orphan.reason) == (
            "bdb:orders",
            intent.serial,
            "orphan",
        )
        _revoke(again, app)
        assert _revoked(openbao, pki.issuing_mount, intent.serial)
        assert again.state.superseded == []
        # the journal no longer holds it back: the next pass installs a new one
        result = app.rotator.run_once(only={KEY})
        assert result.ok, result.summary()
    assert east.db_certs.get(orders) is not None


def test_killed_after_the_install_the_certificate_is_kept(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    pair: tuple[SimulatedCluster, SimulatedCluster],
    tmp_path: Path,
) -> None:
    east, west = pair
    orders = east.add_bdb("orders")
    endpoint = east.open_bdb_endpoint(orders)
    settings = _settings(openbao, pki, east, west, tmp_path, endpoint)
    keeper = _journal(settings, tmp_path, lambda: datetime.now(UTC))

    def die(changes: Sequence[Change]) -> None:
        raise Killed  # installed on the cluster, the process dies before recording it

    keeper.installed = die  # type: ignore[method-assign]
    with build(settings, sleep=lambda s: None, hooks=keeper) as app, pytest.raises(Killed):
        app.rotator.run_once(only={KEY})
    installed = east.db_certs.get(orders)
    assert installed is not None
    serial = CertificateInfo.from_pem(installed.chain_pem).serial

    again = _journal(settings, tmp_path, lambda: datetime.now(UTC))
    assert again.unresolved() == {KEY}
    with build(settings, sleep=lambda s: None, hooks=again) as app:
        assert again.replay(app.rotator) == {}
        _revoke(again, app)
    assert again.state is not None
    assert not again.state.journal and not again.state.pending
    assert again.state.record(KEY).serial == serial  # kept: it is the one installed
    assert again.state.superseded == []
    assert not _revoked(openbao, pki.issuing_mount, serial)


def test_a_superseded_database_certificate_is_revoked_after_the_grace_period(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    pair: tuple[SimulatedCluster, SimulatedCluster],
    tmp_path: Path,
) -> None:
    east, west = pair
    orders = east.add_bdb("orders")
    endpoint = east.open_bdb_endpoint(orders)
    settings = _settings(openbao, pki, east, west, tmp_path, endpoint, revoke_grace="1h")
    now = [datetime.now(UTC)]
    keeper = _journal(settings, tmp_path, lambda: now[0])
    with build(settings, sleep=lambda s: None, hooks=keeper, clock=lambda: now[0]) as app:
        assert app.rotator.run_once(only={KEY}).ok
        first = keeper.state.record(KEY).serial if keeper.state else None
        assert first is not None
        assert keeper.state is not None and keeper.state.superseded == []  # replaced a foreign one
        now[0] += timedelta(hours=500)  # due again
        result = app.rotator.run_once(only={KEY})
        assert result.ok, result.summary()
        second = keeper.state.record(KEY).serial
        assert second not in (None, first)
        [old] = keeper.state.superseded
        assert (old.name, old.serial, old.reason) == ("bdb:orders", first, "superseded")
        assert old.revoke_after == now[0] + timedelta(hours=1)
        _revoke(keeper, app)  # inside the grace period: waits
        assert not _revoked(openbao, pki.issuing_mount, first)
        now[0] += timedelta(hours=1, seconds=1)
        _revoke(keeper, app)
    assert _revoked(openbao, pki.issuing_mount, first)
    assert second is not None and not _revoked(openbao, pki.issuing_mount, second)
    assert keeper.state.superseded == []


def test_the_runaway_guard_counts_database_certificates(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    pair: tuple[SimulatedCluster, SimulatedCluster],
    tmp_path: Path,
) -> None:
    east, west = pair
    orders = east.add_bdb("orders")
    endpoint = east.open_bdb_endpoint(orders)
    settings = _settings(openbao, pki, east, west, tmp_path, endpoint, max_issues_per_hour=2)
    keeper = _journal(settings, tmp_path, lambda: datetime.now(UTC))
    with build(settings, sleep=lambda s: None, hooks=keeper) as app:
        for _ in range(2):
            east.db_certs.delete(orders)  # the database lost its certificate: due again
            result = app.rotator.run_once(only={KEY})
            assert result.ok, result.summary()
        assert keeper.state is not None and len(keeper.state.record(KEY).issued_at) == 2
        east.db_certs.delete(orders)
        issued = len(_serials(openbao, pki.issuing_mount))
        result = app.rotator.run_once(only={KEY})
    [failed] = [o for o in result.outcomes if o.name == "bdb:orders"]
    assert failed.result == "failed" and "runaway guard" in (failed.error or "")
    assert len(_serials(openbao, pki.issuing_mount)) == issued  # Vault was not asked
    assert east.db_certs.get(orders) is None
    assert keeper.runaway.get(KEY) is not None


def _serials(openbao: OpenBaoServer, mount: str) -> set[str]:
    answer = openbao.client().secrets.pki.list_certificates(mount_point=mount)
    return {str(s) for s in answer["data"]["keys"]}
