"""High availability: three `vault-bridge run` replicas against one OpenBao with Raft storage.

The replicas share one real OpenBao (initialised and unsealed, so it survives a restart) and
simulated clusters on loopback whose databases live in one world (Active-Active databases span
them). Each replica talks to the clusters as a user of its own, so the simulators' request logs
tell who sent what. The replicas hold a token with only the policy `vault-bridge policy` prints
for their configuration. ``lease_ttl`` is 3 s, so takeovers happen in seconds.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import hvac
import hvac.exceptions
import pytest
from prometheus_client.parser import text_string_to_metric_families
from vault_bridge_lab.lab import ADMIN_PASSWORD, PASSWORD_ENV, cluster_table, lab_config, to_toml
from vault_bridge_lab.openbao import PkiSetup, setup_pki
from vault_bridge_lab.openbao_raft import RaftOpenBaoServer
from vault_bridge_lab.simulator import DEFAULT_USERS, DatabaseWorld, SimulatedCluster

from tests.conftest import register_secret
from tests.integration import waiting
from tests.integration.conftest import PKI_ROLES
from tests.integration.waiting import free_port
from vault_bridge.config.loading import parse_config
from vault_bridge.decisions.policy import render_policy
from vault_bridge.models.certificates import CertificateInfo

KV = "ha-kv"
LEASE_TTL = 3.0
REPLICAS = 3
BULK = "/v1/cluster/certificates"
LOG_DIR = Path(os.environ.get("VAULT_BRIDGE_TEST_LOG_DIR") or "/tmp")  # secret-scanned


# The HA scenarios wait up to 60 s by default (the agent tests 30 s).
wait_for = functools.partial(waiting.wait_for, timeout=60.0)


def user(index: int) -> str:
    return f"replica-{index}@example.com"


def rid(index: int) -> str:
    return f"replica-{index}"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raft() -> Iterator[RaftOpenBaoServer]:
    server = RaftOpenBaoServer()
    try:
        server.start()
        register_secret(server.root_token)
        register_secret(server.unseal_key)
        client = server.client()
        client.sys.enable_secrets_engine("kv", path=KV, options={"version": "2"})
        # the whole history; a new KV v2 mount answers 400 while it upgrades itself
        wait_for("the KV mount", lambda: _configure(client), timeout=30, every=0.2)
        yield server
    finally:
        server.close()


def _configure(client: hvac.Client) -> bool:
    try:
        client.secrets.kv.v2.configure(max_versions=1000, mount_point=KV)
    except hvac.exceptions.InvalidRequest:
        return False
    return True


@pytest.fixture
def pki(raft: RaftOpenBaoServer) -> PkiSetup:
    suffix = uuid.uuid4().hex[:8]
    return setup_pki(
        raft.client(), mount=f"ha-root-{suffix}", int_mount=f"ha-{suffix}", roles=PKI_ROLES
    )


class Replica:
    """`python -m vault_bridge --config <file> --log-format json -v run` as a child process."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.index = index
        self.port = fleet.ports[index]
        self.config = fleet.configs[index]
        self.log_path = LOG_DIR / f"ha-{fleet.path}-{rid(index)}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vault_bridge",
                "--config",
                str(self.config),
                "--log-format",
                "json",
                "-v",
                "run",
            ],
            env=fleet.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{rid(self.index)} exited {self.proc.returncode}\n{self.tail()}")
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def leader_gauge(self) -> dict[str, float]:
        status, text = self.get("/metrics")
        assert status == 200
        return {
            s.labels["cluster"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "vault_bridge_leader"
        }

    def messages(self, contains: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if contains in entry.get("message", ""):
                    out.append(entry)
        return out

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Fleet:
    """Simulated clusters in one world, and the configurations of three replicas."""

    def __init__(
        self,
        tmp: Path,
        raft: RaftOpenBaoServer,
        pki: PkiSetup,
        cluster_names: Sequence[str],
        *,
        names: Sequence[str] = ("proxy",),
    ) -> None:
        self.raft = raft
        self.pki = pki
        self.path = f"ha-{uuid.uuid4().hex[:8]}"
        self.world = DatabaseWorld()
        users = {**DEFAULT_USERS, **{user(i): (ADMIN_PASSWORD, "admin") for i in range(REPLICAS)}}
        self.sims = {
            name: SimulatedCluster(name, users=users, world=self.world) for name in cluster_names
        }
        for sim in self.sims.values():
            sim.start()
        self.ports = [free_port() for _ in range(REPLICAS)]
        self.configs: list[Path] = []
        self.documents: list[dict[str, Any]] = []
        for i in range(REPLICAS):
            tables = [
                cluster_table(sim, tmp, role="redis", names=names, username=user(i))
                for sim in self.sims.values()
            ]
            document = lab_config(
                raft,
                pki,
                tables,
                state_dir=tmp / f"state-{i}",
                defaults={"key_type": "ec", "key_bits": 256, "ttl": "1h"},
                agent={
                    "listen": f"127.0.0.1:{self.ports[i]}",
                    "max_issues_per_hour": 1000,
                    "stop_grace": "20s",
                },
            )
            document["ha"] = {
                "kv_mount": KV,
                "path": self.path,
                "lease_ttl": f"{LEASE_TTL:g}s",
                "replica_id": rid(i),
            }
            self.documents.append(document)
            config = tmp / f"replica-{i}.toml"
            config.write_text(to_toml(document))
            self.configs.append(config)
        self.token = self._policy_token()
        self.replicas: list[Replica] = []

    def _policy_token(self) -> str:
        """A token holding only the policy `vault-bridge policy` prints (no default policy)."""
        with mock.patch.dict(os.environ, {PASSWORD_ENV: ADMIN_PASSWORD}):
            settings = parse_config(self.documents[0])
        client = self.raft.client()
        name = f"vault-bridge-{self.path}"
        client.sys.create_or_update_policy(name=name, policy=render_policy(settings))
        token = str(
            client.auth.token.create(policies=[name], no_default_policy=True, ttl="2h")["auth"][
                "client_token"
            ]
        )
        register_secret(token)
        return token

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["VAULT_TOKEN"] = self.token
        env[PASSWORD_ENV] = ADMIN_PASSWORD
        return env

    def start(self) -> list[Replica]:
        self.replicas = [Replica(self, i) for i in range(REPLICAS)]
        return self.replicas

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
        for sim in self.sims.values():
            sim.stop()

    # -- what Vault and the clusters say ----------------------------------------------------

    def kv(self, path: str) -> dict[str, Any] | None:
        try:
            answer = self.raft.client().secrets.kv.v2.read_secret_version(
                path=f"{self.path}/{path}", mount_point=KV, raise_on_deleted_version=False
            )
        except hvac.exceptions.InvalidPath:
            return None
        data: dict[str, Any] | None = answer["data"]["data"]
        return data

    def kv_version(self, path: str) -> int:
        meta = self.raft.client().secrets.kv.v2.read_secret_metadata(
            path=f"{self.path}/{path}", mount_point=KV
        )
        return int(meta["data"]["current_version"])

    def kv_versions(self, path: str) -> list[dict[str, Any]]:
        """Every version of a record still kept, oldest first."""
        client = self.raft.client()
        meta = client.secrets.kv.v2.read_secret_metadata(path=f"{self.path}/{path}", mount_point=KV)
        out = []
        for version in sorted(int(v) for v in meta["data"]["versions"]):
            answer = client.secrets.kv.v2.read_secret_version(
                path=f"{self.path}/{path}",
                version=version,
                mount_point=KV,
                raise_on_deleted_version=False,
            )
            out.append(answer["data"]["data"])
        return out

    def leader(self, cluster: str) -> str | None:
        """The holder of the cluster's lease while it has not expired."""
        lease = self.kv(f"lease/cluster/{cluster}") or {}
        holder, expires = lease.get("holder"), lease.get("expires_at")
        if not holder or not expires:
            return None
        live = datetime.fromisoformat(str(expires).replace("Z", "+00:00")) > datetime.now(UTC)
        return str(holder) if live else None

    def leaders(self) -> dict[str, str | None]:
        return {name: self.leader(name) for name in self.sims}

    def journal(self, cluster: str) -> list[dict[str, Any]]:
        record = self.kv(f"state/{cluster}") or {}
        journal: list[dict[str, Any]] = (record.get("state") or {}).get("journal") or []
        return journal

    def issued(self) -> set[str]:
        try:
            answer = self.raft.client().secrets.pki.list_certificates(
                mount_point=self.pki.issuing_mount
            )
        except hvac.exceptions.InvalidPath:
            return set()
        return {str(s) for s in answer["data"]["keys"]}

    def ours(self, cluster: str, name: str = "proxy") -> bool:
        info = CertificateInfo.from_pem(self.sims[cluster].installed_pem(name))
        return info.issuer != info.subject

    def settled(self) -> bool:
        return all(self.ours(c) and not self.journal(c) for c in self.sims)


@pytest.fixture
def fleet_factory(
    tmp_path: Path, raft: RaftOpenBaoServer, pki: PkiSetup
) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(clusters: Sequence[str], **kw: Any) -> Fleet:
        tmp = tmp_path / f"fleet{len(fleets)}"
        tmp.mkdir()
        fleet = Fleet(tmp, raft, pki, clusters, **kw)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.close()


def crdb_events(fleet: Fleet, guid: str, members: Sequence[str]) -> list[tuple[float, str, str]]:
    """Installs on the CRDB's clusters and its force updates, in the order they arrived."""
    events = []
    for name, sim in fleet.sims.items():
        for r in list(sim.requests):
            if name in members and r.method == "PUT" and r.path == BULK and r.status == 200:
                events.append((r.at, "install", str(r.user)))
            if r.method == "POST" and r.path == f"/v1/crdbs/{guid}/updates" and r.status == 200:
                events.append((r.at, "update", str(r.user)))
    return sorted(events)


def check_serialised(events: list[tuple[float, str, str]]) -> int:
    """Every change (consecutive installs by one replica) is followed by exactly one force
    update before any other replica installs; returns the number of changes."""
    pending: str | None = None
    changes = 0
    for _, kind, who in events:
        if kind == "install":
            assert pending in (None, who), f"{who} installed inside {pending}'s window: {events}"
            if pending is None:
                changes += 1
            pending = who
        else:
            assert pending is not None, f"a force update without a change: {events}"
            pending = None
    assert pending is None, f"a change without its force update: {events}"
    return changes


def spread(fleet: Fleet) -> dict[str, str | None] | None:
    """The leaders once 4 clusters are split 2, 1, 1 over the 3 replicas."""
    leaders = fleet.leaders()
    counts = sorted(list(leaders.values()).count(rid(i)) for i in range(REPLICAS))
    return leaders if counts == [1, 1, 2] else None


# -- the fleet -------------------------------------------------------------------------------


def test_fleet_spreads_rotates_once_and_survives_a_vault_restart(
    fleet_factory: Callable[..., Fleet], raft: RaftOpenBaoServer, tmp_path: Path
) -> None:
    fleet = fleet_factory(["a", "b", "c", "d"])
    sims = fleet.sims
    crdbs = {
        sims["a"].add_crdb("ab", participants=[sims["a"], sims["b"]]): ("a", "b"),
        sims["b"].add_crdb("bc", participants=[sims["b"], sims["c"]]): ("b", "c"),
        sims["c"].add_crdb("cd", participants=[sims["c"], sims["d"]]): ("c", "d"),
    }
    replicas = fleet.start()
    wait_for("every certificate rotated", fleet.settled, timeout=90)
    for guid, members in crdbs.items():

        def updated(g: str = guid, m: tuple[str, str] = members) -> bool:
            return check_serialised(crdb_events(fleet, g, m)) >= 1

        wait_for(f"the force update of CRDB {guid}", updated)
    wait_for("every replica ready", lambda: all(r.ready() for r in replicas))
    # spread: shares of 4 clusters over 3 replicas are 2, 1, 1
    leaders = wait_for("the fleet to spread", lambda: spread(fleet), timeout=30)
    assert set(leaders.values()) == {rid(i) for i in range(REPLICAS)}
    # exactly one issue and one install per certificate, one force update per change
    assert len(fleet.issued()) == 4
    for sim in sims.values():
        assert sim.install_count == 1, sim.name
    for guid, members in crdbs.items():
        events = crdb_events(fleet, guid, members)
        changes = check_serialised(events)
        assert 1 <= changes <= len(members), events
    # observable: the gauge says 1 on exactly the leader; status shows leader and expiry
    for cluster, holder in leaders.items():
        gauges = {rid(r.index): r.leader_gauge().get(cluster) for r in replicas}
        assert gauges == {rid(i): (1.0 if rid(i) == holder else 0.0) for i in range(REPLICAS)}
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "vault_bridge",
            "--config",
            str(fleet.configs[0]),
            "status",
            "--json",
        ],
        env=fleet.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    print(shown.stdout, shown.stderr)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert {r["cluster"]: r["leader"] for r in rows} == leaders
    assert all(r["lease_expires"].endswith("Z") for r in rows)

    # Vault restarted: nobody leads while it is down, leases and state survive it
    serials = {
        c: CertificateInfo.from_pem(s.installed_pem("proxy")).serial for c, s in sims.items()
    }
    versions = {c: fleet.kv_version(f"lease/cluster/{c}") for c in sims}
    raft.stop()
    wait_for(
        "every lease to run out",
        lambda: all(not any(r.leader_gauge().values()) for r in replicas),
        timeout=LEASE_TTL * 4,
    )
    raft.start()
    for cluster in sims:
        record = fleet.kv(f"state/{cluster}")
        assert record is not None
        assert record["state"]["certificates"][f"{cluster}/proxy"]["serial"] == serials[cluster]
    wait_for("every cluster led again", lambda: all(fleet.leaders().values()), timeout=30)
    for cluster in sims:  # the lease records survived: their versions went on from there
        assert fleet.kv_version(f"lease/cluster/{cluster}") > versions[cluster]
    wait_for(
        "the gauges to follow",
        lambda: sum(sum(r.leader_gauge().values()) for r in replicas) == len(sims),
        timeout=30,
    )
    wait_for("every replica ready again", lambda: all(r.ready() for r in replicas), timeout=60)
    assert len(fleet.issued()) == 4
    assert all(sim.install_count == 1 for sim in sims.values())


def test_a_killed_leader_is_replaced_and_its_force_update_sent(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory(["e", "w"])
    east = fleet.sims["e"]
    guid = east.add_crdb("east-only")
    updates = f"/v1/crdbs/{guid}/updates"
    # The first step 2 request is held, then refused: the leader is killed meanwhile.
    east.inject_fault("POST", updates, 503, delay=20)
    replicas = fleet.start()
    wait_for("the install on e", lambda: east.install_count == 1)
    # installed and verified; step 2 went at the install's 200 and is held
    wait_for(
        "the journal of e to say followups",
        lambda: [e["phase"] for e in fleet.journal("e")] == ["followups"],
    )
    holder = fleet.leader("e")
    assert holder is not None
    victim = next(r for r in replicas if rid(r.index) == holder)
    victim.proc.kill()
    killed_at = time.monotonic()
    victim.proc.wait(10)

    def sent_by_another() -> list[Any]:
        return [
            r
            for r in east.requests
            if r.path == updates and r.status == 200 and r.user != user(victim.index)
        ]

    update = wait_for("another replica's force update", sent_by_another, timeout=60)[0]
    took = update.at - killed_at
    print(f"force update sent by the new leader {took:.1f}s after the kill")
    assert took <= LEASE_TTL + 10, took
    new_holder = fleet.leader("e")
    assert new_holder not in (None, holder)
    wait_for("the journal to clear", lambda: not fleet.journal("e"))
    assert east.install_count == 1  # the install was found on the cluster, not redone
    assert len(sent_by_another()) == 1
    assert len(fleet.issued()) == 2  # e and w, once each


def test_a_stopped_leader_that_lost_its_lease_writes_and_sends_nothing(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory(["s1", "s2"])
    s1 = fleet.sims["s1"]
    s1.inject_fault("GET", "/v1/nodes", 0, delay=8)  # held after Vault issued
    replicas = fleet.start()
    wait_for(
        "the journal of s1 to say issued",
        lambda: [e["phase"] for e in fleet.journal("s1")] == ["issued"],
    )
    holder = fleet.leader("s1")
    victim = next(r for r in replicas if rid(r.index) == holder)
    victim.proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    fenced = (fleet.kv("lease/cluster/s1") or {})["fencing"]
    orphan = fleet.journal("s1")[0]["serial"]
    wait_for("another leader for s1", lambda: fleet.leader("s1") not in (None, holder))
    wait_for("the new leader's install", lambda: s1.install_count == 1 and fleet.ours("s1"))
    victim.proc.send_signal(signal.SIGCONT)
    wait_for("the woken replica to notice", lambda: victim.messages("lost the lease"), timeout=30)
    wait_for("the held request to be answered", lambda: time.monotonic() > stopped_at + 9)
    time.sleep(LEASE_TTL)
    mine = [r for r in s1.requests if r.user == user(victim.index)]
    assert [r for r in mine if r.method not in ("GET",)] == [], mine
    assert s1.install_count == 1
    served = CertificateInfo.from_pem(s1.installed_pem("proxy")).serial
    assert served != orphan
    # Once the new leader claimed the state, nothing was written under the old lease (the
    # woken replica may lead s1 again later, under a new lease: the shares rebalance).
    versions = fleet.kv_versions("state/s1")
    history = [(v["writer"], v["fencing"]) for v in versions]
    takeover = next(i for i, v in enumerate(versions) if v["fencing"] > fenced)
    assert versions[takeover]["writer"] != holder, history
    assert (holder, fenced) not in history[takeover:], history
    assert [f for _, f in history] == sorted(f for _, f in history), history


def test_a_stopping_replica_hands_its_clusters_over(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(["h1", "h2"])
    replicas = fleet.start()
    wait_for("every certificate rotated", fleet.settled)
    holder = wait_for("a leader for h1", lambda: fleet.leader("h1"))
    victim = next(r for r in replicas if rid(r.index) == holder)
    victim.proc.send_signal(signal.SIGTERM)
    assert victim.proc.wait(30) == 0
    # it gave the lease up on its way out (holder null, same fencing) ...
    history = [(v["holder"], v["fencing"]) for v in fleet.kv_versions("lease/cluster/h1")]
    last = max(i for i, (who, _) in enumerate(history) if who == holder)
    assert history[last + 1 : last + 2] == [(None, history[last][1])], history
    # ... another replica took it, and nothing was issued or installed again
    wait_for("another leader for h1", lambda: fleet.leader("h1") not in (None, holder))
    assert len(fleet.issued()) == 2
    assert fleet.sims["h1"].install_count == 1


def test_the_policy_token_reaches_nothing_else(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(["p1"])
    client = hvac.Client(url=fleet.raft.address, token=fleet.token, timeout=10)
    try:
        kv = client.secrets.kv.v2
        kv.create_or_update_secret(
            path=f"{fleet.path}/lease/probe", secret={"x": 1}, mount_point=KV
        )
        kv.create_or_update_secret(
            path=f"{fleet.path}/state/probe", secret={"x": 1}, mount_point=KV
        )
        denied: Callable[[], object]
        for denied in (
            lambda: kv.create_or_update_secret(path="elsewhere", secret={"x": 1}, mount_point=KV),
            lambda: kv.create_or_update_secret(
                path=f"{fleet.path}/other", secret={"x": 1}, mount_point=KV
            ),
            lambda: kv.list_secrets(path=f"{fleet.path}/lease", mount_point=KV),
            lambda: kv.delete_metadata_and_all_versions(
                path=f"{fleet.path}/lease/probe", mount_point=KV
            ),
        ):
            with pytest.raises(hvac.exceptions.Forbidden):
                denied()
    finally:
        client.adapter.close()
