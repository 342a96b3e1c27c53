"""A database's own certificate (``bdb:<database>``) in the intent journal, offline: the
runaway guard counts it, its journal entry carries its mount, and the replay of an interrupted
install keeps it (installed), revokes it (proven not installed) or leaves it (cannot tell).
Fake Vault, fake clock, a stub for the database read-back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from tests.fakes.clock import FakeClock
from tests.fakes.vault import FakeVault
from tests.fakes.world import MOUNT, make_settings
from vault_bridge.config.settings import CertSpec, Settings
from vault_bridge.models.certificates import InstalledCertificate, IssuedCertificate
from vault_bridge.rotation.executor import Rotator
from vault_bridge.rotation.results import Change
from vault_bridge.state.journal import IntentJournal, RunawayGuardError
from vault_bridge.state.store import StateDir

KEY = ("east", "bdb:orders")


def _settings(tmp_path: Path, **agent: Any) -> Settings:
    database = {"role": "redis", "common_name": "orders.east.example.com", "pki_mount": "pki_db"}
    return make_settings(
        tmp_path / "state",
        agent=agent,
        cluster_keys={"east": {"databases": {"orders": database}}},
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _keeper(settings: Settings, clock: FakeClock) -> IntentJournal:
    state_dir = StateDir(settings.agent.state_dir)
    state_dir.ensure()
    keeper = IntentJournal(state_dir, settings, clock=clock)
    keeper.load()
    return keeper


def _spec(settings: Settings) -> CertSpec:
    return settings.cluster("east").databases[0].cert


def _issue(clock: FakeClock, spec: CertSpec) -> IssuedCertificate:
    return FakeVault(clock).issue(MOUNT, spec.role, common_name=spec.common_name)


class StubRotator:
    """What the replay asks of the executor for a database: installed, not, or unknown."""

    def __init__(self, known: bool | None) -> None:
        self.known = known
        self.clusters = {"east": object()}
        self.followups = None
        self.asked: list[tuple[str, str, str]] = []

    def database_install_known(self, cluster: str, name: str, fingerprint: str) -> bool | None:
        self.asked.append((cluster, name, fingerprint))
        return self.known


def test_the_database_spec_is_journaled_under_its_own_name(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    spec = _spec(settings)
    assert (spec.key_name, spec.name.value, spec.pki_mount) == ("bdb:orders", "proxy", "pki_db")
    assert settings.cluster("east").spec("proxy") is not None  # the cluster's own proxy
    assert settings.cluster("east").spec("proxy") != spec


def test_the_runaway_guard_counts_database_certificates(tmp_path: Path, clock: FakeClock) -> None:
    settings = _settings(tmp_path, max_issues_per_hour=2)
    keeper = _keeper(settings, clock)
    spec = _spec(settings)
    for _ in range(2):
        keeper.before_issue(spec)
        clock.advance(timedelta(minutes=1))
    with pytest.raises(RunawayGuardError, match="runaway guard"):
        keeper.before_issue(spec)
    assert keeper.runaway.get(KEY) is not None
    assert keeper.state is not None
    assert len(keeper.state.record(KEY).issued_at) == 2
    assert keeper.state.record(("east", "proxy")).issued_at == ()  # the cluster's proxy apart
    clock.advance(timedelta(hours=1))
    keeper.before_issue(spec)  # the hour is over


def _installing(settings: Settings, clock: FakeClock) -> tuple[IntentJournal, IssuedCertificate]:
    keeper = _keeper(settings, clock)
    spec = _spec(settings)
    keeper.before_issue(spec)
    issued = _issue(clock, spec)
    keeper.issued(spec, issued)
    keeper.before_install("east", [Change("east", "bdb:orders", issued, None)])
    return _keeper(settings, clock), issued  # the next start reads it back from disk


@pytest.mark.parametrize(
    ("known", "outcome"),
    [(True, "kept"), (False, "revoked"), (None, "left")],
)
def test_the_replay_resolves_an_interrupted_database_install(
    tmp_path: Path, clock: FakeClock, known: bool | None, outcome: str
) -> None:
    settings = _settings(tmp_path, revoke_grace="1h")
    keeper, issued = _installing(settings, clock)
    assert keeper.state is not None
    intent = keeper.state.journal[KEY]
    assert (intent.phase, intent.mount) == ("installing", "pki_db")
    rotator = StubRotator(known)
    errors = keeper.replay(cast(Rotator, rotator))
    assert rotator.asked == [("east", "bdb:orders", issued.info.fingerprint)]
    state = keeper.state
    if outcome == "kept":
        assert errors == {}
        assert not state.journal and not state.pending
        assert state.record(KEY).serial == issued.serial
        assert state.superseded == []
    elif outcome == "revoked":
        assert errors == {}
        assert not state.journal
        [orphan] = state.superseded
        assert (orphan.serial, orphan.reason, orphan.mount) == (issued.serial, "orphan", "pki_db")
        assert orphan.revoke_after == clock()
    else:
        assert KEY in errors and "not revoked" in errors[KEY]
        assert KEY in state.journal and state.superseded == []


def test_issued_and_never_sent_is_an_orphan(tmp_path: Path, clock: FakeClock) -> None:
    settings = _settings(tmp_path)
    keeper = _keeper(settings, clock)
    spec = _spec(settings)
    keeper.before_issue(spec)
    issued = _issue(clock, spec)
    keeper.issued(spec, issued)
    again = _keeper(settings, clock)
    rotator = StubRotator(None)
    assert again.replay(cast(Rotator, rotator)) == {}
    assert rotator.asked == []  # never sent: nothing to read back
    assert again.state is not None
    [orphan] = again.state.superseded
    assert (orphan.name, orphan.serial, orphan.reason) == ("bdb:orders", issued.serial, "orphan")


def test_a_second_rotation_supersedes_the_first(tmp_path: Path, clock: FakeClock) -> None:
    settings = _settings(tmp_path, revoke_grace="1h")
    keeper = _keeper(settings, clock)
    spec = _spec(settings)
    first = _issue(clock, spec)
    keeper.before_install("east", [Change("east", "bdb:orders", first, None)])
    keeper.installed([Change("east", "bdb:orders", first, None)])
    keeper.completed([Change("east", "bdb:orders", first, None)])
    assert keeper.state is not None and keeper.state.superseded == []  # replaced nothing ours
    installed = _installed(first)
    clock.advance(timedelta(hours=2))
    second = _issue(clock, spec)
    change = Change("east", "bdb:orders", second, installed)
    keeper.before_install("east", [change])
    keeper.installed([change])
    assert keeper.state.superseded == []  # the Replica Of carry is not done yet
    keeper.completed([change])
    [old] = keeper.state.superseded
    assert (old.name, old.serial, old.reason, old.mount) == (
        "bdb:orders",
        first.serial,
        "superseded",
        "pki_db",
    )
    assert old.revoke_after == clock() + timedelta(hours=1)


def _installed(issued: IssuedCertificate) -> InstalledCertificate:
    return InstalledCertificate.from_pem("bdb:orders", issued.chain_pem)


def test_the_policy_grants_the_database_and_login_mounts(tmp_path: Path) -> None:
    from vault_bridge.config.loading import parse_config
    from vault_bridge.decisions.policy import policy_rules

    database = {"role": "redis-db", "common_name": "orders.east.example.com", "pki_mount": "pki_db"}
    settings = parse_config(
        {
            "vault": {"address": "https://vault.example.com:8200"},
            "defaults": {"pki_mount": MOUNT, "key_type": "ec", "key_bits": 256},
            "agent": {"state_dir": str(tmp_path / "state")},
            "clusters": [
                {
                    "name": "east",
                    "url": "https://east.example.com:9443",
                    "login": "certificate",
                    "login_certificate": {
                        "role": "login",
                        "common_name": "vault-bridge",
                        "pki_mount": "pki_login",
                    },
                    "certificates": {"cm": {"role": "redis", "common_name": "cm.example.com"}},
                    "databases": {"orders": database},
                }
            ],
        }
    )
    paths = [r.path for r in policy_rules(settings)]
    assert "pki_login/sign/login" in paths or "pki_login/issue/login" in paths
    assert "pki_db/sign/redis-db" in paths and "pki_db/roles/redis-db" in paths
    assert {"pki_db/revoke", "pki_login/revoke", f"{MOUNT}/revoke"} <= set(paths)
