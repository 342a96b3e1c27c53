"""A pass on the bounded pool keeps every ordering rule: a fleet of clusters and CRDBs, offline.

Four clusters with Active-Active databases spanning them, one cluster rejecting every install,
one certificate stopped by the runaway guard, the real journal (:class:`IntentJournal`) and the real
follow-ups (:class:`FollowUps`) over in-memory clusters. The installs of the healthy clusters
meet at a barrier, so the test only passes when they really are in flight at the same time.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import OfflineCA
from vault_bridge.config.loading import parse_config
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.install import CertUpload
from vault_bridge.errors import ClusterError, VaultError
from vault_bridge.models.certificates import CertificateInfo, InstalledCertificate
from vault_bridge.models.cluster import Bdb, Crdb, CrdbInstance, CrdbTask
from vault_bridge.models.vault import MountIssuers, PkiIssuer
from vault_bridge.rotation.executor import Rotator
from vault_bridge.rotation.followups import FollowUps, Limits
from vault_bridge.rotation.results import Change
from vault_bridge.rotation.throttle import VaultThrottle
from vault_bridge.state.journal import IntentJournal
from vault_bridge.state.store import StateDir

NOW = datetime.now(UTC).replace(microsecond=0)
HEALTHY = ("c0", "c1", "c2")
BROKEN = "c3"
# CRDB -> the clusters it spans
CRDBS = {"g-01": ("c0", "c1"), "g-12": ("c1", "c2"), "g-23": ("c2", "c3"), "g-0": ("c0",)}
INTERNODE = "ccs_internode_encryption"


class Events:
    """What happened, in order, from every thread."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def add(self, *event: Any) -> None:
        with self._lock:
            self.items.append(event)

    def index(self, *prefix: Any) -> list[int]:
        return [i for i, e in enumerate(self.items) if e[: len(prefix)] == prefix]


class FakeVault:
    """Signs CSRs with an offline CA; the first ``pushbacks`` sign requests get a 429."""

    def __init__(self, ca: OfflineCA, pushbacks: int = 0) -> None:
        self.ca = ca
        self.pushbacks = pushbacks
        self.signed = 0
        self._lock = threading.Lock()

    def ensure_token(self) -> None:
        return None

    def ca_chain(self, mount: str) -> list[str]:
        return [self.ca.pem]

    def mount_issuers(self, mount: str) -> MountIssuers:
        issuer = PkiIssuer.from_vault(
            mount, {"certificate": self.ca.pem, "issuer_id": "one"}, [self.ca.pem]
        )
        return MountIssuers(mount, (issuer,), "one")

    def certificate_revoked(self, mount: str, serial: str) -> bool | None:
        return False

    def sign(self, mount: str, role: str, csr_pem: str, **_: Any) -> dict[str, Any]:
        with self._lock:
            if self.pushbacks:
                self.pushbacks -= 1
                raise VaultError("rate limited", status=429)
            self.signed += 1
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.ca.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(minutes=1))
            .not_valid_after(NOW + timedelta(days=30))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        cert = builder.sign(self.ca.key, hashes.SHA256())
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return {"certificate": pem, "ca_chain": [self.ca.pem], "serial_number": "x"}


class FakeCluster:
    """One cluster in memory: certificates, CRDBs, update tasks. Records every request."""

    def __init__(self, name: str, events: Events, barrier: threading.Barrier | None) -> None:
        self.name = name
        self.events = events
        self.barrier = barrier
        self.installed: dict[str, InstalledCertificate] = {}
        self.reads = 0
        self.nodes_reads = 0
        self._last: dict[str, InstalledCertificate] | None = None
        self._lock = threading.Lock()

    # the executor's side
    backoff = 0.0

    def set_trust(self, pems: Sequence[str]) -> None:
        return None

    def certificates(self) -> dict[str, InstalledCertificate]:
        with self._lock:
            self.reads += 1
            self._last = dict(self.installed)
            return dict(self.installed)

    def last_certificates(self) -> dict[str, InstalledCertificate]:
        with self._lock:
            last = self._last
        return dict(last) if last is not None else self.certificates()

    def forget_certificates(self) -> None:
        self._last = None

    def lowest_version(self) -> tuple[int, ...]:
        self.nodes_reads += 1
        return (7, 22, 2)

    def put_certificates(self, items: Sequence[CertUpload]) -> None:
        names = tuple(sorted(i.name for i in items))
        self._last = None
        if self.name == BROKEN:
            self.events.add("put", self.name, names, False)
            raise ClusterError("rejected", cluster=self.name, status=400)
        if self.barrier is not None and INTERNODE not in names:
            self.barrier.wait(timeout=30)  # every healthy cluster's install in flight at once
        with self._lock:
            for item in items:
                self.installed[item.name] = InstalledCertificate.from_pem(
                    item.name, item.certificate
                )
        self.events.add("put", self.name, names, True)

    def update_cert(self, item: CertUpload) -> None:
        raise AssertionError("7.22.2: the bulk endpoint only")

    # the follow-ups' side
    def _crdb(self, guid: str) -> Crdb:
        instances = tuple(
            CrdbInstance(i, c, f"https://{c}.example.com:9443", "1")
            for i, c in enumerate(CRDBS[guid], 1)
        )
        return Crdb(guid, guid, instances, ("1",))

    def crdbs(self) -> list[Crdb]:
        return [self._crdb(g) for g, span in CRDBS.items() if self.name in span]

    def bdbs(self) -> list[Bdb]:
        return [
            Bdb(i, f"{g}-{self.name}", True, g, (), ())
            for i, (g, span) in enumerate(CRDBS.items(), 1)
            if self.name in span
        ]

    def crdb(self, guid: str) -> Crdb:
        return self._crdb(guid)

    def crdb_tasks(self) -> list[CrdbTask]:
        return []

    def crdb_update(
        self, guid: str, body: Mapping[str, Any] | None = None, *, task_id: str | None = None
    ) -> CrdbTask:
        self.events.add("update", guid, self.name)
        return CrdbTask(task_id or f"t-{guid}", guid, "finished")

    def crdb_task(self, task_id: str) -> CrdbTask:
        raise AssertionError("finished at once")

    def reserve_connections(self, count: int) -> None:
        return None


class RecordingHooks:
    """The real journal, each call recorded; two calls at once would be a violation."""

    def __init__(self, keeper: IntentJournal, events: Events) -> None:
        self.keeper = keeper
        self.events = events
        self.active = 0
        self.overlaps = 0

    def _enter(self, *event: Any) -> None:
        self.active += 1
        if self.active > 1:
            self.overlaps += 1
        self.events.add(*event)

    def before_issue(self, spec: Any, *, explicit: bool = False) -> None:
        self._enter("before_issue", spec.cluster, spec.name.value)
        try:
            self.keeper.before_issue(spec, explicit=explicit)
        finally:
            self.active -= 1

    def issued(self, spec: Any, issued: Any) -> None:
        self._enter("issued", spec.cluster, spec.name.value)
        try:
            self.keeper.issued(spec, issued)
        finally:
            self.active -= 1

    def before_install(self, cluster: str, changes: Sequence[Change]) -> None:
        self._enter("before_install", cluster, tuple(sorted(c.name for c in changes)))
        try:
            self.keeper.before_install(cluster, changes)
        finally:
            self.active -= 1

    def installed(self, changes: Sequence[Change]) -> None:
        self._enter("installed", tuple(sorted((c.cluster, c.name) for c in changes)))
        try:
            self.keeper.installed(changes)
        finally:
            self.active -= 1

    def completed(self, changes: Sequence[Change]) -> None:
        self._enter("completed", tuple(sorted((c.cluster, c.name) for c in changes)))
        try:
            self.keeper.completed(changes)
        finally:
            self.active -= 1


def fleet_settings(tmp_path: Path, concurrency: int) -> Settings:
    password = tmp_path / "pw"
    password.write_text("pw")
    clusters = []
    for name in (*HEALTHY, BROKEN):
        certs: dict[str, Any] = {
            n: {"role": "r", "common_name": f"{n}.{name}.example.com"}
            for n in ("proxy", "syncer", "cm")
        }
        if name == "c1":
            certs[INTERNODE] = {
                "role": "r",
                "common_name": f"internode.{name}.example.com",
                "key_type": "rsa",
                "key_bits": 2048,
            }
        clusters.append(
            {
                "name": name,
                "url": f"https://{name}.example.com:9443",
                "username": "admin",
                "password_file": str(password),
                "certificates": certs,
            }
        )
    return parse_config(
        {
            "vault": {"address": "https://vault.example.com:8200"},
            "defaults": {"key_type": "ec", "key_bits": 256, "ttl": "720h"},
            "agent": {
                "state_dir": str(tmp_path / "state"),
                "concurrency": concurrency,
                "max_issues_per_hour": 2,
            },
            "clusters": clusters,
        }
    )


@pytest.mark.parametrize("concurrency", [4, 8])
def test_a_fleet_pass_keeps_every_ordering_rule(
    tmp_path: Path, test_ca: OfflineCA, concurrency: int
) -> None:
    settings = fleet_settings(tmp_path, concurrency)
    events = Events()
    barrier = threading.Barrier(len(HEALTHY))
    clusters = {c.name: FakeCluster(c.name, events, barrier) for c in settings.clusters}
    state_dir = StateDir(settings.agent.state_dir)
    state_dir.ensure()
    keeper = IntentJournal(state_dir, settings, clock=lambda: NOW)
    keeper.load()
    assert keeper.state is not None
    for minutes in (10, 20):  # c2's cm was issued twice this hour: the runaway guard stops it
        keeper.state.note_issue(("c2", "cm"), NOW - timedelta(minutes=minutes))
    hooks = RecordingHooks(keeper, events)
    followups = FollowUps(
        settings,
        clusters,  # type: ignore[arg-type]
        clock=lambda: 0.0,
        sleep=lambda s: None,
        lock=threading.Lock(),
        limits=Limits(retry_delay=0.0, in_flight_wait=0.0),
    )

    def probe(endpoint: str) -> CertificateInfo:
        cluster = clusters[endpoint.split(".")[0]]
        return cluster.installed["cm"].info

    sleeps: list[float] = []
    rotator = Rotator(
        settings,
        FakeVault(test_ca, pushbacks=3),  # type: ignore[arg-type]
        clusters,
        clock=lambda: NOW,
        hooks=hooks,
        followups=followups,
        probe=probe,
        sleep=lambda s: None,
        vault_sleep=sleeps.append,
    )
    result = rotator.run_once()

    outcomes = {(o.cluster, o.name): o for o in result.outcomes}
    installed = sorted(k for k, o in outcomes.items() if o.result == "installed")
    expected = sorted(
        [(c, n) for c in HEALTHY for n in ("proxy", "syncer", "cm") if (c, n) != ("c2", "cm")]
        + [("c1", INTERNODE)]
    )
    assert installed == expected, result.summary()
    assert "runaway guard" in (outcomes[("c2", "cm")].error or "")
    for name in ("proxy", "syncer", "cm"):  # the broken cluster fails alone
        assert outcomes[(BROKEN, name)].result == "failed"
    assert len(result.outcomes) == 13

    # Vault pushed back: the throttle waited with a growing backoff and went on.
    assert len(sleeps) == 3 and set(sleeps) <= {0.25, 0.5, 1.0}
    assert rotator.throttle.pushbacks == 3

    # One install request per cluster per batch; internode certificates apart.
    puts = [e for e in events.items if e[0] == "put"]
    for name in HEALTHY:
        mine = [e[2] for e in puts if e[1] == name]
        ordinary = tuple(sorted(n for n in ("proxy", "syncer", "cm") if (name, n) != ("c2", "cm")))
        assert mine[0] == ordinary
        assert mine[1:] == ([(INTERNODE,)] if name == "c1" else [])
    assert all(INTERNODE not in names or names == (INTERNODE,) for _, _, names, _ in puts)
    # The broken cluster: the batch, then each certificate alone (naming the one at fault).
    assert [e[2] for e in puts if e[1] == BROKEN] == [
        ("cm", "proxy", "syncer"),
        ("proxy",),
        ("syncer",),
        ("cm",),
    ]

    # The journal: every intent written before its batch is sent.
    for name in (*HEALTHY, BROKEN):
        first_put = min(i for i, e in enumerate(events.items) if e[:2] == ("put", name))
        intents = [i for i, e in enumerate(events.items) if e[:2] == ("before_install", name)]
        assert intents and intents[0] < first_put
    assert hooks.overlaps == 0  # the hooks ran one at a time
    (installed_at,) = events.index("installed")
    last_put = max(i for i, e in enumerate(events.items) if e[0] == "put")
    assert installed_at > last_put  # recorded once, after every install of the pass
    assert set(keeper.state.journal) == {(BROKEN, n) for n in ("proxy", "syncer", "cm")}
    assert keeper.state.pending == {}  # every follow-up done
    assert keeper.state.record(("c1", "proxy")).serial == outcomes[("c1", "proxy")].serial

    # Active-Active step 2: once per CRDB, after the last install on every cluster it spans.
    for guid, span in CRDBS.items():
        updates = events.index("update", guid)
        assert len(updates) == 1, (guid, updates)
        good = [c for c in span if c != BROKEN]
        last_install = max(
            i for i, e in enumerate(events.items) if e[0] == "put" and e[1] in good and e[3]
        )
        assert updates[0] > last_install, guid
    (completed_at,) = events.index("completed")
    assert completed_at > max(i for i, e in enumerate(events.items) if e[0] == "update")

    # One read of each cluster to plan (shared with the follow-ups' discovery), one to verify.
    # (an internode certificate is confirmed by a read of its own: the REST API may be away)
    for name in HEALTHY:
        assert clusters[name].reads == (3 if name == "c1" else 2), name
    assert clusters[BROKEN].reads == 1


def test_concurrency_one_is_the_sequential_order(tmp_path: Path, test_ca: OfflineCA) -> None:
    settings = fleet_settings(tmp_path, 1)
    events = Events()
    clusters = {c.name: FakeCluster(c.name, events, None) for c in settings.clusters}
    keeper = IntentJournal(StateDir(settings.agent.state_dir), settings, clock=lambda: NOW)
    StateDir(settings.agent.state_dir).ensure()
    keeper.load()
    rotator = Rotator(
        settings,
        FakeVault(test_ca),  # type: ignore[arg-type]
        clusters,
        clock=lambda: NOW,
        hooks=RecordingHooks(keeper, events),
        probe=lambda endpoint: clusters[endpoint.split(".")[0]].installed["cm"].info,
    )
    rotator.run_once()
    asked = [(e[1], e[2]) for e in events.items if e[0] == "before_issue"]
    assert asked == [(s.cluster, s.name.value) for s in settings.specs()]


def test_the_throttle_halves_on_pushback_and_grows_back() -> None:
    sleeps: list[float] = []
    throttle = VaultThrottle(8, sleep=sleeps.append, retries=4, backoff=0.25)
    answers: list[Exception | None] = [
        VaultError("busy", status=429),
        VaultError("sealed", status=503),
        None,
    ]

    def call() -> str:
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return "ok"

    assert throttle.call("proxy on east", call) == "ok"
    assert sleeps == [0.25, 0.5]  # exponential backoff
    assert throttle.limit == 3  # 8 -> 4 -> 2, then one success: 3
    assert throttle.pushbacks == 2
    for _ in range(10):
        throttle.call("x", lambda: None)
    assert throttle.limit == 8  # back to the pool's size, never above


@pytest.mark.parametrize("status", [400, 403, None])
def test_the_throttle_does_not_retry_what_waiting_cannot_fix(status: int | None) -> None:
    sleeps: list[float] = []
    throttle = VaultThrottle(4, sleep=sleeps.append)
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise VaultError("no", status=status)

    with pytest.raises(VaultError):
        throttle.call("x", call)
    assert calls == 1 and sleeps == [] and throttle.limit == 4


def test_the_throttle_gives_up_after_its_retries() -> None:
    sleeps: list[float] = []
    throttle = VaultThrottle(2, sleep=sleeps.append, retries=3, backoff=1.0, max_delay=3.0)

    def call() -> None:
        raise VaultError("busy", status=429)

    with pytest.raises(VaultError, match="busy"):
        throttle.call("x", call)
    assert sleeps == [1.0, 2.0, 3.0] and throttle.limit == 1


def test_the_throttle_bounds_requests_in_flight() -> None:
    throttle = VaultThrottle(3, sleep=lambda s: None)
    gate = threading.Event()
    entered = threading.Semaphore(0)

    def call() -> None:
        entered.release()
        gate.wait(10)

    threads = [threading.Thread(target=throttle.call, args=("x", call)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for _ in range(3):
        assert entered.acquire(timeout=10)
    assert not entered.acquire(timeout=0.05)  # the fourth waits for a slot
    assert throttle.in_flight == 3
    gate.set()
    for thread in threads:
        thread.join(10)
    assert throttle.peak == 3 and throttle.in_flight == 0
