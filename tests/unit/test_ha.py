"""High availability offline: the coordinator and the KV state store against an in-memory KV
with check-and-set, injected wall and local clocks (no sleeping, no Vault)."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from vault_bridge_lab.lab import to_toml

from vault_bridge.adapters.vault.kv import KvEntry
from vault_bridge.agent.ha import Coordinator
from vault_bridge.agent.health import Metrics, Snapshot
from vault_bridge.agent.revocation import revoke_due
from vault_bridge.cli.render import status_json, status_table
from vault_bridge.config.loading import load_config, parse_config
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.policy import policy_rules
from vault_bridge.decisions.renewal import CertStatus
from vault_bridge.errors import CasConflictError, ConfigError, LeaseLostError, VaultUnavailableError
from vault_bridge.state.journal import IntentJournal
from vault_bridge.state.records import CertRecord, State, Superseded
from vault_bridge.state.store import StateDir

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class FakeKv:
    """KV v2 semantics that matter here: versions, check-and-set, outages."""

    mount = "secret"

    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.down = False
        self.writes: list[tuple[str, Mapping[str, Any]]] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def read(self, path: str) -> KvEntry | None:
        if self.down:
            raise VaultUnavailableError("Vault is unavailable")
        versions = self.records.get(path)
        if not versions:
            return None
        return KvEntry(copy.deepcopy(versions[-1]), len(versions))

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        if self.down:
            raise VaultUnavailableError("Vault is unavailable")
        versions = self.records.setdefault(path, [])
        if cas != len(versions):
            raise CasConflictError(f"{path} changed since version {cas}")
        versions.append(json.loads(json.dumps(data)))
        self.writes.append((path, data))
        return len(versions)


class Clocks:
    def __init__(self) -> None:
        self.wall = T0
        self.local = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.local += seconds


def settings_for(tmp_path: Path, clusters: int, replica: str, **ha: Any) -> Settings:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    return parse_config(
        {
            "vault": {"address": "https://vault.example.com:8200"},
            "agent": {"state_dir": str(tmp_path / replica)},
            "ha": {"lease_ttl": "30s", "replica_id": replica, **ha},
            "clusters": [
                {
                    "name": f"c{i}",
                    "url": f"https://c{i}.example.com:9443",
                    "username": "admin@example.com",
                    "password_file": str(pw),
                    "certificates": {"proxy": {"role": "redis", "common_name": f"c{i}.example"}},
                }
                for i in range(clusters)
            ],
        }
    )


class Replica:
    def __init__(self, tmp_path: Path, kv: FakeKv, clocks: Clocks, name: str, clusters: int):
        settings = settings_for(tmp_path, clusters, name)
        self.ha = Coordinator(
            settings,
            kv,
            clock=lambda: clocks.wall,
            local=lambda: clocks.local,
        )
        self.keeper = IntentJournal(
            StateDir(tmp_path / name), settings, clock=lambda: clocks.wall, store=self.ha.store
        )
        self.keeper.load()

    def step(self) -> bool:
        self.ha.upkeep()
        return self.ha.step(self.keeper)


@pytest.fixture
def world(tmp_path: Path) -> tuple[FakeKv, Clocks, Any]:
    kv, clocks = FakeKv(), Clocks()

    def replica(name: str, clusters: int = 2) -> Replica:
        return Replica(tmp_path, kv, clocks, name, clusters)

    return kv, clocks, replica


def test_one_replica_leads_everything_after_settling(world: Any) -> None:
    kv, clocks, replica = world
    a = replica("a")
    assert a.step() is False  # registered: settles one interval first
    clocks.advance(10)
    assert a.step() is True
    assert a.ha.led() == {"c0", "c1"}
    lease = kv.read("vault-bridge/lease/cluster/c0")
    assert lease.data["holder"] == "a" and lease.data["fencing"] == 1
    # its state records are claimed with its fencing value
    assert kv.read("vault-bridge/state/c0").data["fencing"] == 1


def test_two_replicas_split_the_fleet_and_a_dead_ones_clusters_move(world: Any) -> None:
    kv, clocks, replica = world
    a, b = replica("a", 4), replica("b", 4)
    for _ in range(3):
        a.step()
        b.step()
        clocks.advance(10)
    a.step()
    b.step()
    assert len(a.ha.led()) == 2 and len(b.ha.led()) == 2
    assert a.ha.led().isdisjoint(b.ha.led())
    # b stops renewing (killed): its leases and membership run out, a takes everything
    moved = b.ha.led()
    for _ in range(4):
        clocks.advance(10)
        a.step()
    assert a.ha.led() == {"c0", "c1", "c2", "c3"}
    for cluster in moved:
        assert kv.read(f"vault-bridge/lease/cluster/{cluster}").data["fencing"] == 2


def test_a_paused_leader_proves_nothing_and_writes_nothing(world: Any) -> None:
    kv, clocks, replica = world
    a, b = replica("a", 1), replica("b", 1)
    a.step()
    clocks.advance(10)
    a.step()
    assert a.ha.led() == {"c0"}
    a.keeper.state.certificates[("c0", "proxy")] = CertRecord(serial="01")
    a.keeper.save()
    # a is frozen for 60 s (SIGSTOP): no renewal, b takes over and claims the state
    b.step()
    clocks.advance(60)
    b.step()
    assert b.ha.led() == {"c0"}
    assert b.keeper.state.certificates[("c0", "proxy")].serial == "01"
    writes = len(kv.writes)
    # a wakes: its local deadline has passed; it can neither prove nor write
    assert not a.ha.leads("c0")
    with pytest.raises(LeaseLostError):
        a.ha.prove("c0")
    a.keeper.state.certificates[("c0", "proxy")] = CertRecord(serial="02")
    with pytest.raises(LeaseLostError):
        a.keeper.save()
    assert len(kv.writes) == writes
    assert kv.read("vault-bridge/state/c0").data["writer"] == "b"
    # its next step forgets the cluster
    a.ha.step(a.keeper)
    assert ("c0", "proxy") not in a.keeper.state.certificates


def test_a_stale_write_loses_its_check_and_set(world: Any) -> None:
    kv, clocks, replica = world
    a = replica("a", 1)
    a.step()
    clocks.advance(10)
    a.step()
    # someone else wrote the record behind a's back (a replica that took over)
    entry = kv.read("vault-bridge/state/c0")
    kv.write("vault-bridge/state/c0", {**entry.data, "writer": "x"}, cas=entry.version)
    a.keeper.state.certificates[("c0", "proxy")] = CertRecord(serial="03")
    with pytest.raises(LeaseLostError, match="written by another replica"):
        a.keeper.save()
    assert kv.read("vault-bridge/state/c0").data["writer"] == "x"
    assert not a.ha.leads("c0")


def test_unchanged_state_is_not_written_again(world: Any) -> None:
    kv, clocks, replica = world
    a = replica("a", 3)
    a.step()
    clocks.advance(10)
    a.step()
    a.keeper.state.certificates[("c1", "proxy")] = CertRecord(serial="04")
    before = [p for p, _ in kv.writes if "/state/" in p]
    a.keeper.save()
    after = [p for p, _ in kv.writes if "/state/" in p]
    assert after[len(before) :] == ["vault-bridge/state/c1"]


def test_vault_down_the_lease_runs_out_and_counts_failures(world: Any) -> None:
    kv, clocks, replica = world
    a = replica("a", 1)
    a.step()
    clocks.advance(10)
    a.step()
    kv.down = True
    clocks.advance(10)
    a.ha.upkeep()
    assert a.ha.leads("c0")  # still within the last renewal's deadline
    assert a.ha.failures["c0"] == 1
    clocks.advance(20)
    a.ha.upkeep()
    assert not a.ha.leads("c0")
    assert a.ha.leaders() == {"c0": False}
    assert a.ha.failures["c0"] == 2
    kv.down = False
    clocks.advance(10)
    a.step()
    assert a.ha.leads("c0")
    # nobody wrote the record meanwhile (its check-and-set proves it): renewed as it was
    assert kv.read("vault-bridge/lease/cluster/c0").data["fencing"] == 1


def test_a_lease_that_ran_out_between_steps_is_taken_anew_with_its_state(world: Any) -> None:
    kv, clocks, replica = world
    a = replica("a", 1)
    a.step()
    clocks.advance(10)
    a.step()
    a.keeper.state.certificates[("c0", "proxy")] = CertRecord(serial="05")
    a.keeper.save()
    kv.down = True
    clocks.advance(30)
    a.step()  # run out: the cluster and its state are dropped
    assert ("c0", "proxy") not in a.keeper.state.certificates
    kv.down = False
    clocks.advance(10)
    assert a.step() is True
    assert a.keeper.state.certificates[("c0", "proxy")].serial == "05"  # read back
    assert kv.read("vault-bridge/lease/cluster/c0").data["fencing"] == 2
    a.keeper.state.certificates[("c0", "proxy")] = CertRecord(serial="06")
    a.keeper.save()  # claimed again: its writes go through
    assert (
        kv.read("vault-bridge/state/c0").data["state"]["certificates"]["c0/proxy"]["serial"] == "06"
    )


def test_a_corrupt_state_record_is_left_alone(world: Any) -> None:
    kv, clocks, replica = world
    kv.write("vault-bridge/state/c0", {"fencing": 0, "state": {"version": 99}}, cas=0)
    a = replica("a", 1)
    a.step()
    clocks.advance(10)
    assert a.step() is False
    assert a.ha.led() == set()
    assert kv.read("vault-bridge/state/c0").data["state"] == {"version": 99}
    assert kv.read("vault-bridge/lease/cluster/c0").data["holder"] is None  # released


def test_crdb_locks_are_exclusive_and_proven(world: Any) -> None:
    _, _, replica = world
    a, b = replica("a", 1), replica("b", 1)
    b.ha.crdb_wait = 0  # no waiting for the lock a holds
    assert a.ha.acquire_crdbs(["g1"]) == {}
    a.ha.prove_crdb("g1")
    assert "locked by replica a" in b.ha.acquire_crdbs(["g1"])["g1"]
    a.ha.release_crdbs()
    assert b.ha.acquire_crdbs(["g1"]) == {}
    with pytest.raises(LeaseLostError):
        a.ha.prove_crdb("g1")


def test_close_releases_and_leaves(world: Any) -> None:
    kv, clocks, replica = world
    a = replica("a", 1)
    a.step()
    clocks.advance(10)
    a.step()
    a.ha.close()
    assert kv.read("vault-bridge/lease/cluster/c0").data["holder"] is None
    assert "a" not in kv.read("vault-bridge/lease/members").data["members"]


# -- configuration, policy, metrics, status -------------------------------------------------


@pytest.mark.parametrize(
    ("ha", "message"),
    [
        ({"lease_ttl": "1s"}, "ha.lease_ttl: expected at least 2s"),
        ({"lease_ttl": "soon"}, "ha.lease_ttl: expected a duration"),
        ({"path": "../elsewhere"}, "ha.path: expected a KV path"),
        ({"kv_mount": ""}, "ha.kv_mount: expected a KV path"),
        ({"backend": "consul"}, "ha.backend"),
        ({"replica_id": "has space"}, "ha.replica_id: expected up to 128"),
        ({"lease_tll": "30s"}, "ha.lease_tll: unknown key (did you mean 'lease_ttl'?)"),
    ],
)
def test_ha_configuration_errors(tmp_path: Path, ha: dict[str, Any], message: str) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x")
    data = {
        "vault": {"address": "https://vault.example.com:8200"},
        "ha": ha,
        "clusters": [
            {"name": "e", "url": "https://e:9443", "username": "u", "password_file": str(pw)}
        ],
    }
    path = tmp_path / "c.toml"
    path.write_text(to_toml(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(message), str(err.value)


def test_ha_defaults_and_replica_id(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, 1, "")
    assert settings.ha is not None
    assert (settings.ha.backend, settings.ha.kv_mount, settings.ha.path) == (
        "vault-kv",
        "secret",
        "vault-bridge",
    )
    assert settings.ha.replica_id.endswith(f"-{__import__('os').getpid()}")


def test_policy_grants_exactly_the_lease_and_state_paths(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, 1, "a", kv_mount="kv", path="teams/vb")
    rules = {r.path: r.capabilities for r in policy_rules(settings)}
    ha = {p: c for p, c in rules.items() if p.startswith("kv/")}
    assert ha == {
        "kv/data/teams/vb/lease/*": ("read", "create", "update"),
        "kv/data/teams/vb/state/*": ("read", "create", "update"),
    }
    plain = parse_config(
        {
            "vault": {"address": "https://vault.example.com:8200"},
            "clusters": [
                {"name": "e", "url": "https://e:9443", "username": "u", "password_env": "HOME"}
            ],
        }
    )
    assert not [r.path for r in policy_rules(plain) if "/lease/" in r.path]


def test_metrics_show_the_leader_and_renewal_failures() -> None:
    metrics = Metrics()
    metrics.publish(
        Snapshot(leaders={"east": True, "west": False}, lease_renewal_failures={"west": 3})
    )
    text = metrics.exposition().decode()
    assert 'vault_bridge_leader{cluster="east"} 1.0' in text
    assert 'vault_bridge_leader{cluster="west"} 0.0' in text
    assert 'vault_bridge_lease_renewal_failures_total{cluster="west"} 3.0' in text
    assert 'vault_bridge_lease_renewal_failures_total{cluster="east"} 0.0' in text
    assert "vault_bridge_leader" not in Metrics().exposition().decode()  # without [ha]


def test_status_shows_leader_and_lease_expiry() -> None:
    status = CertStatus("east", "proxy", "ok", None, None, None, None, None, None)
    rows = json.loads(status_json([status], {"east": ("replica-1", T0)}))
    assert rows[0]["leader"] == "replica-1"
    assert rows[0]["lease_expires"] == "2026-12-01T09:00:00Z"
    rows = json.loads(status_json([status]))
    assert rows[0]["leader"] is None and rows[0]["lease_expires"] is None
    table = status_table([status], {"east": ("replica-1", T0)})
    assert "LEADER" in table and "replica-1" in table
    assert "LEADER" not in status_table([status])


def test_kv_state_keeps_clusters_apart(world: Any) -> None:
    kv, clocks, replica = world
    a = replica("a", 2)
    a.step()
    clocks.advance(10)
    a.step()
    state: State = a.keeper.state
    state.certificates[("c0", "proxy")] = CertRecord(serial="0a")
    state.certificates[("c1", "proxy")] = CertRecord(serial="1a")
    a.keeper.save()
    c0 = kv.read("vault-bridge/state/c0").data["state"]["certificates"]
    c1 = kv.read("vault-bridge/state/c1").data["state"]["certificates"]
    assert set(c0) == {"c0/proxy"} and set(c1) == {"c1/proxy"}


class RevokingVault:
    def __init__(self) -> None:
        self.revoked: list[str] = []

    def ensure_token(self) -> None:
        pass

    def revoke(
        self, mount: str, *, serial: str | None = None, certificate: str | None = None
    ) -> None:
        self.revoked.append(str(serial))


def test_revocations_need_a_fresh_proof_of_the_lease(world: Any) -> None:
    kv, clocks, replica = world
    a = replica("a", 1)
    a.step()
    clocks.advance(10)
    a.step()
    orphan = Superseded(
        cluster="c0",
        name="proxy",
        serial="0f",
        mount="pki",
        not_after=clocks.wall + timedelta(days=1),
        revoke_after=clocks.wall,
        reason="orphan",
    )
    a.keeper.state.superseded.append(orphan)
    a.keeper.save()
    vault = RevokingVault()
    # another replica took the lease over behind a's back: a revokes nothing
    entry = kv.read("vault-bridge/lease/cluster/c0")
    kv.write(
        "vault-bridge/lease/cluster/c0",
        {**entry.data, "holder": "b", "fencing": entry.data["fencing"] + 1},
        cas=entry.version,
    )
    revoke_due(
        a.keeper,
        vault,  # type: ignore[arg-type]
        enabled=True,
        rng=random.Random(1),
        blocked_for=timedelta(minutes=10),
        prove=a.ha.prove,
    )
    assert vault.revoked == []
    # the replica that leads it revokes it
    b = replica("b", 1)
    clocks.advance(60)
    b.step()
    clocks.advance(10)
    b.step()
    assert b.ha.led() == {"c0"}
    revoke_due(
        b.keeper,
        vault,  # type: ignore[arg-type]
        enabled=True,
        rng=random.Random(1),
        blocked_for=timedelta(minutes=10),
        prove=b.ha.prove,
    )
    assert vault.revoked == ["0f"]


def test_a_lease_lost_in_the_background_stops_the_next_write(world: Any) -> None:
    kv, clocks, replica = world
    a = replica("a", 1)
    a.step()
    clocks.advance(10)
    a.step()
    entry = kv.read("vault-bridge/lease/cluster/c0")
    kv.write(
        "vault-bridge/lease/cluster/c0",
        {**entry.data, "holder": "b", "fencing": entry.data["fencing"] + 1},
        cas=entry.version,
    )
    a.ha.upkeep()  # the renewal finds the lease taken
    assert not a.ha.leads("c0")
    writes = len(kv.writes)
    a.keeper.state.certificates[("c0", "proxy")] = CertRecord(serial="07")  # say, "installing"
    with pytest.raises(LeaseLostError, match="no longer leads cluster c0"):
        a.keeper.save()  # what would come right before an install
    assert [p for p, _ in kv.writes[writes:] if "/state/" in p] == []
    a.ha.step(a.keeper)  # drops c0's state: the replica is healthy again
    a.keeper.save()
    assert a.keeper.healthy
    assert ("c0", "proxy") not in a.keeper.state.certificates


@pytest.mark.parametrize(
    "record",
    [
        {"holder": 7, "fencing": 1},
        {"holder": "x", "fencing": "one"},
        {"holder": "x", "fencing": 1, "expires_at": "soon"},
    ],
)
def test_a_malformed_lease_is_left_alone(world: Any, record: dict[str, Any]) -> None:
    kv, clocks, replica = world
    kv.write("vault-bridge/lease/cluster/c0", record, cas=0)
    a = replica("a", 1)
    a.step()
    clocks.advance(10)
    assert a.step() is False
    assert a.ha.led() == set()
    assert kv.read("vault-bridge/lease/cluster/c0").data == record  # never overwritten
    assert kv.read("vault-bridge/state/c0") is None
