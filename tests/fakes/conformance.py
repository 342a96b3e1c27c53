"""Type-level checks, run by mypy --strict (``python3 dev.py lint``): each fake, and each real
adapter, implements its port. Nothing here runs."""

from __future__ import annotations

from tests.fakes.clock import FakeClock
from tests.fakes.cluster import FakeCluster, FakeProbe, FakeRunner
from tests.fakes.lock import FakeLock
from tests.fakes.vault import FakeVault
from tests.fakes.world import FakeApp
from vault_bridge.adapters import ports
from vault_bridge.adapters.crdb_runners import CrdbCliRunner, DockerRunner, RestRunner
from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.adapters.tls_probe import served_certificate
from vault_bridge.adapters.vault.client import VaultClient
from vault_bridge.rotation.app import AppPorts
from vault_bridge.rotation.followup_jobs import FollowUpLock, Lock


def fakes(
    vault: FakeVault, cluster: FakeCluster, probe: FakeProbe, clock: FakeClock, lock: FakeLock
) -> tuple[
    ports.Vault, ports.ClusterApi, ports.TlsProbe, ports.Clock, ports.Monotonic, ports.Sleep, Lock
]:
    return vault, cluster, probe, clock, clock.monotonic, clock.sleep, lock


def adapters(
    vault: VaultClient,
    cluster: ClusterClient,
    rest: RestRunner,
    cli: CrdbCliRunner,
    docker: DockerRunner,
    lock: FollowUpLock,
) -> tuple[
    ports.Vault,
    ports.ClusterApi,
    ports.TlsProbe,
    ports.CrdbRunner,
    ports.CrdbRunner,
    ports.CrdbRunner,
    Lock,
]:
    return vault, cluster, served_certificate, rest, cli, docker, lock


def app(fake: FakeApp) -> AppPorts:
    return fake


def runner(fake: FakeRunner) -> ports.CrdbRunner:
    return fake
