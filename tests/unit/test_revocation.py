"""Revoking what was replaced (:func:`revoke_due`) through the Vault port: after the grace
period, by serial or by PEM, never an expired one nor one whose replacement is unfinished;
a policy error waits for the resync, an outage backs off. Fake Vault, fake clock."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pytest

from tests.fakes.clock import FakeClock
from tests.fakes.vault import FakeVault
from tests.fakes.world import MOUNT, World, make_settings
from vault_bridge.agent.revocation import revoke_due
from vault_bridge.errors import VaultError, VaultPermissionError, VaultUnavailableError
from vault_bridge.state.journal import IntentJournal
from vault_bridge.state.records import Intent, Superseded
from vault_bridge.state.store import StateDir

RESYNC = timedelta(minutes=10)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def vault(clock: FakeClock) -> FakeVault:
    return FakeVault(clock)


@pytest.fixture
def keeper(tmp_path: Path, clock: FakeClock) -> IntentJournal:
    settings = make_settings(tmp_path / "state")
    state_dir = StateDir(settings.agent.state_dir)
    state_dir.ensure()
    keeper = IntentJournal(state_dir, settings, clock=clock)
    keeper.load()
    return keeper


def entry(
    clock: FakeClock,
    *,
    serial: str = "01:02",
    grace: timedelta = timedelta(hours=1),
    lifetime: timedelta = timedelta(days=20),
    pem: str | None = None,
    reason: str = "superseded",
) -> Superseded:
    now = clock()
    return Superseded(
        "east",
        "cm",
        serial,
        MOUNT,
        not_after=now + lifetime,
        revoke_after=now + grace,
        reason=reason,  # type: ignore[arg-type]
        pem=pem,
    )


def revoke(keeper: IntentJournal, vault: FakeVault, *, enabled: bool = True) -> None:
    revoke_due(keeper, vault, enabled=enabled, rng=random.Random(3), blocked_for=RESYNC)


def queue(keeper: IntentJournal) -> list[Superseded]:
    assert keeper.state is not None
    return keeper.state.superseded


def on_disk(keeper: IntentJournal) -> list[Superseded]:
    return keeper.state_dir.load().superseded


def test_revoked_by_serial_once_the_grace_period_is_over(
    keeper: IntentJournal, vault: FakeVault, clock: FakeClock
) -> None:
    queue(keeper).append(entry(clock))
    revoke(keeper, vault)
    assert vault.revoked == [] and len(queue(keeper)) == 1
    clock.advance(timedelta(hours=1))
    revoke(keeper, vault)
    assert vault.revoked == [(MOUNT, "01:02")]
    assert queue(keeper) == [] and on_disk(keeper) == []
    assert vault.calls[:1] == ["ensure_token"]


def test_an_orphan_is_revoked_at_once(
    keeper: IntentJournal, vault: FakeVault, clock: FakeClock
) -> None:
    queue(keeper).append(entry(clock, grace=timedelta(0), reason="orphan"))
    revoke(keeper, vault)
    assert vault.revoked == [(MOUNT, "01:02")]


def test_an_expired_certificate_is_dropped_without_asking_vault(
    keeper: IntentJournal, vault: FakeVault, clock: FakeClock
) -> None:
    queue(keeper).append(entry(clock, lifetime=timedelta(minutes=30)))
    clock.advance(timedelta(hours=1))
    revoke(keeper, vault)
    assert queue(keeper) == [] and vault.calls == [] and on_disk(keeper) == []


def test_disabled_revokes_nothing_but_still_drops_the_expired(
    keeper: IntentJournal, vault: FakeVault, clock: FakeClock
) -> None:
    queue(keeper).extend([entry(clock), entry(clock, serial="03", lifetime=timedelta(hours=1))])
    clock.advance(timedelta(hours=2))
    revoke(keeper, vault, enabled=False)
    assert vault.calls == [] and [e.serial for e in queue(keeper)] == ["01:02"]


def test_never_before_the_replacement_and_its_follow_ups_are_done(
    keeper: IntentJournal, vault: FakeVault, clock: FakeClock
) -> None:
    state = keeper.state
    assert state is not None
    queue(keeper).append(entry(clock, grace=timedelta(0)))
    now = clock()
    state.pending[("east", "cm")] = Intent(
        "east", "cm", "followups", "0a", now + timedelta(days=30), MOUNT, "", None, started_at=now
    )
    revoke(keeper, vault)
    assert vault.revoked == []
    del state.pending[("east", "cm")]
    revoke(keeper, vault)
    assert vault.revoked == [(MOUNT, "01:02")]


@pytest.mark.parametrize("status", [400, 404])
def test_a_role_that_keeps_no_copy_is_revoked_by_pem(
    keeper: IntentJournal, vault: FakeVault, clock: FakeClock, status: int
) -> None:
    queue(keeper).append(entry(clock, grace=timedelta(0), pem="-----BEGIN CERTIFICATE-----"))
    vault.fail["revoke"] = [VaultError("certificate not found", status=status)]
    revoke(keeper, vault)
    assert vault.revoked == [(MOUNT, "pem")] and queue(keeper) == []


def test_an_unknown_serial_without_a_pem_is_dropped(
    keeper: IntentJournal, vault: FakeVault, clock: FakeClock
) -> None:
    queue(keeper).append(entry(clock, grace=timedelta(0)))
    vault.fail["revoke"] = [VaultError("certificate not found", status=404)]
    revoke(keeper, vault)
    assert vault.revoked == [] and queue(keeper) == []


def test_a_policy_error_waits_for_the_resync(
    keeper: IntentJournal, vault: FakeVault, clock: FakeClock
) -> None:
    queue(keeper).append(entry(clock, grace=timedelta(0)))
    vault.fail["revoke"] = [VaultPermissionError("permission denied", status=403)]
    revoke(keeper, vault)
    (kept,) = queue(keeper)
    assert kept.next_attempt == clock() + RESYNC and on_disk(keeper) == [kept]
    clock.advance(RESYNC / 2)
    revoke(keeper, vault)
    assert vault.calls.count("revoke") == 1
    clock.advance(RESYNC / 2)
    revoke(keeper, vault)
    assert vault.revoked == [(MOUNT, "01:02")]


def test_an_outage_backs_off(keeper: IntentJournal, vault: FakeVault, clock: FakeClock) -> None:
    queue(keeper).append(entry(clock, grace=timedelta(0)))
    vault.fail["revoke"] = [VaultUnavailableError("Vault is unavailable", status=503)] * 2
    revoke(keeper, vault)
    (first,) = queue(keeper)
    assert first.failures == 1 and first.next_attempt is not None
    revoke(keeper, vault)  # not due yet: Vault is not asked
    assert vault.calls.count("revoke") == 1
    clock.advance(first.next_attempt - clock())
    revoke(keeper, vault)
    (second,) = queue(keeper)
    assert second.failures == 2 and second.next_attempt is not None
    assert second.next_attempt > first.next_attempt
    clock.advance(second.next_attempt - clock())
    revoke(keeper, vault)
    assert queue(keeper) == [] and vault.revoked == [(MOUNT, "01:02")]


def test_nothing_is_revoked_while_the_state_cannot_be_written(
    keeper: IntentJournal, vault: FakeVault, clock: FakeClock
) -> None:
    queue(keeper).append(entry(clock, grace=timedelta(0)))
    keeper.error = "cannot write state.json: read-only file system"
    revoke(keeper, vault)
    assert vault.calls == [] and len(queue(keeper)) == 1


def test_a_rotation_queues_the_replaced_certificate_and_revokes_it_after_the_grace(
    tmp_path: Path,
) -> None:
    w = World(make_settings(tmp_path / "state", certificates=("cm",)))
    state_dir = StateDir(w.settings.agent.state_dir)
    state_dir.ensure()
    keeper = IntentJournal(state_dir, w.settings, clock=w.clock)
    keeper.load()
    rotator = w.rotator(hooks=keeper)
    first = rotator.run_once().outcomes[0].serial
    second = rotator.run_once(force=[("east", "cm")]).outcomes[0].serial
    assert first and second and first != second
    assert [e.serial for e in queue(keeper)] == [first]
    revoke(keeper, w.vault)
    assert w.vault.revoked == []
    w.clock.advance(timedelta(hours=1))  # revoke_grace
    revoke(keeper, w.vault)
    assert w.vault.revoked == [(MOUNT, first)]
