"""Settings and fakes wired together the way :func:`vault_bridge.rotation.app.build` wires the
real adapters: a clock, Vault, clusters by name, the TLS probe, one event log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from tests.fakes.clock import FakeClock
from tests.fakes.cluster import FakeCluster, FakeProbe
from tests.fakes.lock import FakeLock
from tests.fakes.vault import FakeVault, LocalCA, subject, to_pem
from vault_bridge.config.loading import parse_config
from vault_bridge.config.settings import Settings
from vault_bridge.rotation.executor import Rotator
from vault_bridge.rotation.followup_jobs import Limits
from vault_bridge.rotation.followups import FollowUps
from vault_bridge.rotation.hooks import FollowUpRunner, RotationHooks

MOUNT = "pki_int"
# Bounds small enough that nothing a test waits on (armed jobs, joins) takes noticeable time.
FAST = Limits(in_flight_wait=2.0, task_timeout=10.0, attempts=3, retry_delay=1.0, poll=0.5)


def make_settings(
    state_dir: Path,
    clusters: Sequence[str] = ("east",),
    certificates: Sequence[str] = ("cm", "proxy"),
    *,
    agent: Mapping[str, Any] | None = None,
    cluster_keys: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """A configuration of ``clusters`` (``https://<name>.example.com:9443``), each managing
    ``certificates`` with EC keys from ``pki_int``; passwords come from Vault (none here)."""
    return parse_config(
        {
            "vault": {"address": "https://vault.example.com:8200"},
            "defaults": {"pki_mount": MOUNT, "key_type": "ec", "key_bits": 256, "ttl": "720h"},
            "agent": {"state_dir": str(state_dir), **(agent or {})},
            "clusters": [
                {
                    "name": name,
                    "url": f"https://{name}.example.com:9443",
                    "username": "admin@example.com",
                    "password_vault": f"secret/redis/{name}#password",
                    "certificates": {
                        cert: {"role": "redis", "common_name": f"{cert}.{name}.example.com"}
                        for cert in certificates
                    },
                    **(cluster_keys or {}).get(name, {}),
                }
                for name in clusters
            ],
        }
    )


@dataclass
class World:
    settings: Settings
    clock: FakeClock = field(default_factory=FakeClock)
    events: list[str] = field(default_factory=list)
    vault: FakeVault = field(init=False)
    clusters: dict[str, FakeCluster] = field(init=False)
    probe: FakeProbe = field(init=False)
    lock: FakeLock = field(init=False)

    def __post_init__(self) -> None:
        self.vault = FakeVault(self.clock)
        self.clusters = {
            c.name: FakeCluster(c.name, events=self.events) for c in self.settings.clusters
        }
        self.probe = FakeProbe(self.settings, self.clusters)
        self.lock = FakeLock(self.events)

    def rotator(
        self,
        *,
        hooks: RotationHooks | None = None,
        followups: FollowUpRunner | None = None,
        cls: type[Rotator] = Rotator,
    ) -> Rotator:
        return cls(
            self.settings,
            self.vault,
            self.clusters,
            clock=self.clock,
            hooks=hooks,
            followups=followups,
            probe=self.probe,
            sleep=self.clock.sleep,
        )

    def followups(self, limits: Limits = FAST) -> FollowUps:
        return FollowUps(
            self.settings,
            self.clusters,
            clock=self.clock.monotonic,
            sleep=self.clock.sleep,
            lock=self.lock,
            limits=limits,
        )

    def leaf(
        self,
        ca: LocalCA,
        cn: str,
        *,
        not_before: datetime | None = None,
        lifetime: timedelta = timedelta(days=30),
    ) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or self.clock() - timedelta(days=1)
        return to_pem(ca.sign(key.public_key(), subject(cn), not_before=start, lifetime=lifetime))

    def install_ours(self, cluster: str, name: str, **kw: Any) -> str:
        """A certificate from our Vault's CA, already on ``cluster``; returns its PEM."""
        pem = self.leaf(self.vault.ca(MOUNT), f"{name}.{cluster}.example.com", **kw)
        self.clusters[cluster].install_pem(name, pem)
        return pem

    def install_foreign(self, cluster: str, name: str) -> str:
        """A certificate from some other CA (the cluster's self-signed one, say)."""
        pem = self.leaf(LocalCA("Someone else", self.clock()), f"{name}.{cluster}.example.com")
        self.clusters[cluster].install_pem(name, pem)
        return pem

    def requests(self, cluster: str | None = None) -> list[str]:
        """The events of ``cluster`` (all, without the cluster prefix when one is named)."""
        if cluster is None:
            return list(self.events)
        prefix = f"{cluster}: "
        return [e.removeprefix(prefix) for e in self.events if e.startswith(prefix)]


@dataclass
class FakeApp:
    """Stands in for :class:`vault_bridge.rotation.app.App` (implements ``AppPorts`` and is a
    context manager, as :func:`vault_bridge.rotation.app.build`'s answer is)."""

    rotator: Rotator
    vault: FakeVault
    closed: bool = False

    def __enter__(self) -> FakeApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True
