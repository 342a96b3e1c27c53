"""The state directory and the journal: atomic 0600 writes, errors that stop issuing, corrupt
files kept, the lock, and every journal transition, with an injected clock (no sleeping)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OfflineCA
from tests.state_files import read_state, snapshot
from vault_bridge.config.loading import parse_config
from vault_bridge.config.settings import CertSpec, Settings
from vault_bridge.decisions.schedule import Backoff
from vault_bridge.errors import ClusterError, StateError
from vault_bridge.models.certificates import (
    CertChange,
    CertificateInfo,
    InstalledCertificate,
    IssuedCertificate,
)
from vault_bridge.rotation.results import Change
from vault_bridge.state.journal import (
    IntentJournal,
    JournalPendingError,
    RunawayGuardError,
    StoppingError,
)
from vault_bridge.state.records import CertRecord, Intent, Phase, State, Superseded
from vault_bridge.state.store import LockHeld, StateDir, write_atomic

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    password = tmp_path / "pw"
    password.write_text("pw")
    return parse_config(
        {
            "vault": {"address": "https://vault.example.com:8200"},
            "defaults": {"pki_mount": "pki_int", "key_type": "ec", "key_bits": 256},
            "agent": {
                "state_dir": str(tmp_path / "state"),
                "max_issues_per_hour": 3,
                "revoke_grace": "1h",
            },
            "clusters": [
                {
                    "name": "east",
                    "url": "https://east.example.com:9443",
                    "username": "admin",
                    "password_file": str(password),
                    "certificates": {
                        "proxy": {"role": "r", "common_name": "proxy.example.com"},
                        "cm": {"role": "r", "common_name": "cm.example.com"},
                    },
                }
            ],
        }
    )


@pytest.fixture
def state_dir(settings: Settings) -> StateDir:
    directory = StateDir(settings.agent.state_dir)
    directory.ensure()
    return directory


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keeper(state_dir: StateDir, settings: Settings, clock: Clock) -> IntentJournal:
    keeper = IntentJournal(state_dir, settings, clock=clock)
    keeper.load()
    return keeper


def spec(settings: Settings, name: str) -> CertSpec:
    found = settings.cluster("east").spec(name)
    assert found is not None
    return found


def issued_cert(ca: OfflineCA, cn: str = "proxy.example.com") -> IssuedCertificate:
    pem, key = ca.leaf(cn, not_before=T0 - timedelta(minutes=1), lifetime=timedelta(days=30))
    info = CertificateInfo.from_pem(pem)
    return IssuedCertificate(
        pem, (ca.pem,), key, info.serial, info.not_after, lease_id="pki/issue/r/abc"
    )


# -- files -----------------------------------------------------------------------------------


def test_atomic_write_is_0600_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")
    target.chmod(0o644)
    write_atomic(target, '{"new": true}')
    assert target.read_text() == '{"new": true}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_directory_is_0700(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    StateDir(loose).ensure()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    fresh = StateDir(tmp_path / "a" / "b")
    fresh.ensure()
    assert stat.S_IMODE(fresh.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(fresh.requests_path.stat().st_mode) == 0o700


def test_state_round_trip(state_dir: StateDir, test_ca: OfflineCA) -> None:
    issued = issued_cert(test_ca)
    state = State()
    state.update(
        ("east", "proxy"),
        serial="01:02",
        not_after=T0,
        mount="pki_int",
        lease_id="pki_int/sign/r/xyz",
        issued_at=(T0,),
        backoff=Backoff(2, T0 + timedelta(seconds=20), "down"),
    )
    state.superseded.append(
        Superseded("east", "cm", "0a:0b", "pki_int", T0, T0, pem=issued.certificate)
    )
    state.journal_installing(
        Intent(
            "east",
            "proxy",
            "installing",
            issued.serial,
            issued.not_after,
            "pki_int",
            issued.chain_pem,
            None,
            started_at=T0,
        )
    )
    state.pending[("east", "cm")] = intent("followups", "cm", issued, issued.chain_pem)
    state_dir.save(state)
    again = state_dir.load()
    assert again == state
    text = state_dir.cluster_path("east").read_text()
    assert "PRIVATE KEY" not in text  # the journal carries public PEMs only
    for path in (state_dir.state_path, state_dir.cluster_path("east")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_state_file_is_an_empty_state(state_dir: StateDir) -> None:
    assert state_dir.load() == State()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"version": 99}', b'{"version": 1, "journal": [{"phase": "x"}]}', b"\xff\xfe"],
)
def test_corrupt_state_file_is_kept_and_named(state_dir: StateDir, content: bytes) -> None:
    state_dir.state_path.write_bytes(content)
    with pytest.raises(StateError) as raised:
        state_dir.load()
    message = str(raised.value)
    assert str(state_dir.state_path) in message and "corrupt" in message
    copies = list(state_dir.path.glob("state.json.corrupt-*"))
    assert len(copies) == 1 and str(copies[0]) in message
    assert state_dir.state_path.read_bytes() == content  # never lost nor overwritten
    with pytest.raises(StateError):
        state_dir.load()
    assert len(list(state_dir.path.glob("state.json.corrupt-*"))) == 1  # one copy per content


def test_a_corrupt_cluster_file_is_kept_and_named(state_dir: StateDir) -> None:
    state = State()
    state.update(("east", "proxy"), serial="01")
    state.update(("west", "proxy"), serial="02")
    state_dir.save(state)
    path = state_dir.cluster_path("west")
    content = b'{"version": 2, "cluster": "west", "journal": [{"phase": "x"}]}'
    path.write_bytes(content)
    with pytest.raises(StateError) as raised:
        state_dir.load()
    message = str(raised.value)
    (copy,) = state_dir.clusters_path.glob("west.json.corrupt-*")
    assert str(path) in message and str(copy) in message and "corrupt" in message
    assert path.read_bytes() == content == copy.read_bytes()  # never lost nor overwritten


def test_a_step_rewrites_only_its_own_clusters_file(
    state_dir: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = State()
    for index in range(50):
        state.update((f"c{index:02}", "proxy"), serial=f"{index:02x}")
    state_dir.save(state)
    assert len(list(state_dir.clusters_path.iterdir())) == 50
    written: list[Path] = []
    real = write_atomic

    def counting(path: Path, content: str | bytes) -> None:
        written.append(path)
        real(path, content)

    import vault_bridge.state.store as store

    monkeypatch.setattr(store, "write_atomic", counting)
    state.note_issue(("c07", "proxy"), T0)
    state_dir.save(state, ["c07"])
    state_dir.save(state)  # everything that changed: nothing else did
    monkeypatch.undo()
    assert written == [state_dir.cluster_path("c07"), state_dir.state_path]
    again = StateDir(state_dir.path).load()
    assert again == state


def test_a_state_written_by_steps_alone_is_read_back(state_dir: StateDir) -> None:
    # a one-shot pass may write nothing but its steps (never a whole save): the next start
    # must still find every issue time and journal entry
    state = State()
    state.note_issue(("east", "proxy"), T0)
    state_dir.save(state, ["east"])
    assert json.loads(state_dir.state_path.read_text())["version"] == 2  # the marker too
    assert StateDir(state_dir.path).load() == state
    state_dir.state_path.unlink()  # even without the marker
    assert StateDir(state_dir.path).load() == state


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "east west", "ünïcode"])
def test_cluster_names_never_escape_the_clusters_directory(state_dir: StateDir, name: str) -> None:
    state = State()
    state.update((name, "proxy"), serial="01")
    state_dir.save(state)
    path = state_dir.cluster_path(name)
    assert path.parent == state_dir.clusters_path and not path.name.startswith(".")
    assert StateDir(state_dir.path).load() == state


def test_a_version_1_state_file_is_migrated(state_dir: StateDir, test_ca: OfflineCA) -> None:
    issued = issued_cert(test_ca)
    state = State()
    state.update(("east", "proxy"), serial="01", mount="pki_int", issued_at=(T0,))
    state.update(("west", "cm"), serial="02")
    state.superseded.append(Superseded("west", "cm", "0a:0b", "pki_int", T0, T0))
    state.pending[("east", "proxy")] = intent("followups", "proxy", issued, issued.chain_pem)
    legacy = state.to_json()
    legacy["version"] = 1
    state_dir.state_path.write_text(json.dumps(legacy))
    assert state_dir.load() == state
    assert json.loads(state_dir.state_path.read_text())["version"] == 2
    assert sorted(p.name for p in state_dir.clusters_path.iterdir()) == ["east.json", "west.json"]
    assert StateDir(state_dir.path).load() == state  # read back from the cluster files


def test_a_migration_cut_short_is_done_again(
    state_dir: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = State()
    state.update(("east", "proxy"), serial="01")
    state.update(("west", "proxy"), serial="02")
    legacy = state.to_json()
    legacy["version"] = 1
    state_dir.state_path.write_text(json.dumps(legacy))
    import vault_bridge.state.store as store

    real = store.write_atomic

    def dies_at_the_marker(path: Path, content: str | bytes) -> None:
        if path.name == "state.json":
            raise StateError("killed")
        real(path, content)

    monkeypatch.setattr(store, "write_atomic", dies_at_the_marker)
    with pytest.raises(StateError):
        StateDir(state_dir.path).load()
    assert json.loads(state_dir.state_path.read_text())["version"] == 1  # still the original
    monkeypatch.undo()
    assert StateDir(state_dir.path).load() == state
    assert json.loads(state_dir.state_path.read_text())["version"] == 2


@contextlib.contextmanager
def read_only(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A directory nothing can be created in: chmod for a normal user, ``chattr +i`` for root
    (a read-only directory does not stop root), else an emulated EROFS."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if (
        chattr
        and subprocess.run(
            [chattr, "+i", str(directory)], capture_output=True, check=False
        ).returncode
        == 0
    ):
        try:
            yield
        finally:
            subprocess.run([chattr, "-i", str(directory)], check=True)
        return
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if str(path).startswith(str(directory)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", refusing_open)
        yield


def test_read_only_directory_stops_issuing(
    keeper: IntentJournal, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    keeper.save()
    before = snapshot(keeper.state_dir.path)
    with read_only(keeper.state_dir.clusters_path, monkeypatch):
        with pytest.raises(StateError, match="nothing is issued until it works"):
            keeper.before_issue(spec(settings, "proxy"))
        assert not keeper.healthy
        with pytest.raises(StateError, match="not issuing"):  # and it stays stopped
            keeper.before_issue(spec(settings, "proxy"))
    assert keeper.state is not None and keeper.state.record(("east", "proxy")).issued_at == ()
    assert snapshot(keeper.state_dir.path) == before
    keeper.save()  # writable again: issuing resumes
    assert keeper.healthy
    keeper.before_issue(spec(settings, "proxy"))


def test_full_disk_is_a_state_error_and_the_old_file_stays(
    keeper: IntentJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert keeper.state is not None
    keeper.state.update(("east", "proxy"), serial="01")
    keeper.save()
    before = snapshot(keeper.state_dir.path)
    keeper.state.update(("east", "proxy"), serial="02")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StateError, match="no space left"):
        keeper.save()
    monkeypatch.undo()
    assert snapshot(keeper.state_dir.path) == before
    assert sorted(p.name for p in keeper.state_dir.path.iterdir()) == [
        "clusters",
        "requests",
        "state.json",
    ]
    assert [p.name for p in keeper.state_dir.clusters_path.iterdir()] == ["east.json"]


def test_unwritable_location_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot create"):
        StateDir(blocker / "state").ensure()


# -- the lock and the requests ---------------------------------------------------------------


def test_lock_names_the_agent(state_dir: StateDir) -> None:
    with state_dir.locked("agent"):
        state_dir.write_pid()
        with pytest.raises(LockHeld) as held, state_dir.locked("cli"):
            pass
        assert held.value.agent_pid == os.getpid()
        assert f"pid {os.getpid()}" in str(held.value)
    with state_dir.locked("cli"):  # free again; a stale agent.pid is removed by the holder
        assert state_dir.agent_pid() is None


def test_lock_held_by_a_one_shot_pass(state_dir: StateDir) -> None:
    with state_dir.locked("cli"):
        with pytest.raises(LockHeld) as held, state_dir.locked("cli", wait=0.2, poll=0.05):
            pass
        assert held.value.agent_pid is None


def test_requests_and_answers(state_dir: StateDir) -> None:
    first = state_dir.submit({"kind": "issue", "targets": [["east", "proxy"]]})
    second = state_dir.submit({"kind": "run", "targets": []})
    taken = state_dir.take_requests()
    assert [r["id"] for r in taken] == sorted([first, second])
    assert state_dir.take_requests() == []
    assert state_dir.read_result(first) is None
    state_dir.write_result(first, {"ok": True})
    assert state_dir.read_result(first) == {"ok": True}
    assert state_dir.read_result(first) is None  # removed once read
    third = state_dir.submit({"kind": "run"})
    assert state_dir.withdraw(third) and not state_dir.withdraw(third)


# -- the journal -----------------------------------------------------------------------------


def on_disk(keeper: IntentJournal) -> dict[str, Any]:
    return read_state(keeper.state_dir.path)


def test_a_rotation_through_the_journal(
    keeper: IntentJournal, settings: Settings, clock: Clock, test_ca: OfflineCA
) -> None:
    assert keeper.state is not None
    old = issued_cert(test_ca)
    keeper.state.update(
        ("east", "proxy"), serial=old.serial, not_after=old.not_after, mount="pki_int"
    )
    proxy = spec(settings, "proxy")

    keeper.before_issue(proxy)
    assert on_disk(keeper)["certificates"]["east/proxy"]["issued_at"] == ["2026-03-01T12:00:00Z"]
    new = issued_cert(test_ca)
    keeper.issued(proxy, new)
    assert [e["phase"] for e in on_disk(keeper)["journal"]] == ["issued"]
    previous = InstalledCertificate.from_pem("proxy", old.chain_pem)
    change = Change("east", "proxy", new, previous)
    keeper.before_install("east", [change])
    (entry,) = on_disk(keeper)["journal"]
    assert (entry["phase"], entry["serial"], entry["mount"]) == (
        "installing",
        new.serial,
        "pki_int",
    )
    assert entry["old_pem"] == old.chain_pem and entry["lease_id"] == "pki/issue/r/abc"
    keeper.installed([change])
    assert [e["phase"] for e in on_disk(keeper)["journal"]] == ["followups"]
    clock.advance(timedelta(minutes=5))
    keeper.completed([change])
    data = on_disk(keeper)
    assert data["journal"] == []
    assert data["certificates"]["east/proxy"]["serial"] == new.serial
    assert data["certificates"]["east/proxy"]["lease_id"] == "pki/issue/r/abc"
    (superseded,) = data["superseded"]
    assert (superseded["serial"], superseded["reason"]) == (old.serial, "superseded")
    assert superseded["revoke_after"] == "2026-03-01T13:05:00Z"  # after the grace period
    assert keeper.rotations[("east", "proxy", "success")] == 1
    assert "PRIVATE KEY" not in keeper.state_dir.cluster_path("east").read_text()


def test_a_foreign_certificate_is_never_queued_for_revocation(
    keeper: IntentJournal, settings: Settings, test_ca: OfflineCA
) -> None:
    foreign, new = issued_cert(test_ca), issued_cert(test_ca)
    change = Change("east", "cm", new, InstalledCertificate.from_pem("cm", foreign.chain_pem))
    keeper.before_install("east", [change])
    keeper.installed([change])
    keeper.completed([change])
    assert keeper.state is not None and keeper.state.superseded == []


def test_runaway_guard_stops_issuing_for_an_hour(
    keeper: IntentJournal, settings: Settings, clock: Clock
) -> None:
    proxy = spec(settings, "proxy")
    for _ in range(3):
        keeper.before_issue(proxy)
        clock.advance(timedelta(minutes=1))
    with pytest.raises(RunawayGuardError, match="max_issues_per_hour"):
        keeper.before_issue(proxy)
    assert keeper.runaway[("east", "proxy")] == T0 + timedelta(hours=1)
    assert keeper.rotations[("east", "proxy", "blocked")] == 1
    keeper.before_issue(spec(settings, "cm"))  # per cluster/name
    clock.now = T0 + timedelta(hours=1)
    keeper.before_issue(proxy)
    assert ("east", "proxy") not in keeper.runaway


def test_stopping_issues_nothing(state_dir: StateDir, settings: Settings, clock: Clock) -> None:
    keeper = IntentJournal(state_dir, settings, clock=clock, stopping=lambda: True)
    keeper.load()
    with pytest.raises(StoppingError):
        keeper.before_issue(spec(settings, "proxy"))


@dataclass
class FakeCluster:
    installed: dict[str, str]
    fail: bool = False

    def certificates(self) -> dict[str, InstalledCertificate]:
        if self.fail:
            raise ClusterError("cannot reach the cluster", cluster="east")
        return {n: InstalledCertificate.from_pem(n, p) for n, p in self.installed.items()}


@dataclass
class FakeFollowUps:
    errors: dict[tuple[str, str], str] = field(default_factory=dict)
    calls: list[list[CertChange]] = field(default_factory=list)

    def run(self, changes: Sequence[CertChange]) -> dict[tuple[str, str], str]:
        self.calls.append(list(changes))
        return dict(self.errors)


@dataclass
class FakeRotator:
    clusters: dict[str, FakeCluster]
    followups: FakeFollowUps | None
    # what the TLS probe proves: True, the listener serves another certificate
    proof: bool = True

    def served_elsewhere(self, cluster: str, name: str, fingerprint: str) -> bool:
        return self.proof


def intent(phase: Phase, name: str, issued: IssuedCertificate, old: str | None = None) -> Intent:
    return Intent(
        "east",
        name,
        phase,
        issued.serial,
        issued.not_after,
        "pki_int",
        issued.chain_pem,
        old,
        started_at=T0,
    )


def test_replay_resolves_every_phase(
    keeper: IntentJournal, clock: Clock, test_ca: OfflineCA
) -> None:
    assert keeper.state is not None
    orphan, went_in, old = issued_cert(test_ca), issued_cert(test_ca), issued_cert(test_ca)
    keeper.state.journal_issued(intent("issued", "cm", orphan))
    keeper.state.journal_installing(intent("installing", "proxy", went_in, old.chain_pem))
    followups = FakeFollowUps()
    rotator = FakeRotator({"east": FakeCluster({"proxy": went_in.chain_pem})}, followups)
    assert keeper.unresolved() == {("east", "cm"), ("east", "proxy")}

    assert keeper.replay(rotator) == {}  # type: ignore[arg-type]

    # issued, never sent: revoked at once; sent and found: its follow-ups ran, then done
    (entry,) = keeper.state.superseded
    assert (entry.serial, entry.reason, entry.revoke_after) == (orphan.serial, "orphan", T0)
    assert followups.calls == [[CertChange("east", "proxy", went_in.chain_pem, old.chain_pem)]]
    assert keeper.state.journal == {} and keeper.state.pending == {}
    assert keeper.state.record(("east", "proxy")).serial == went_in.serial
    assert on_disk(keeper)["journal"] == []


def test_replay_of_an_install_that_did_not_happen(
    keeper: IntentJournal, test_ca: OfflineCA
) -> None:
    assert keeper.state is not None
    lost = issued_cert(test_ca)
    keeper.state.journal_installing(intent("installing", "proxy", lost))
    followups = FakeFollowUps()
    keeper.replay(FakeRotator({"east": FakeCluster({})}, followups))  # type: ignore[arg-type]
    assert [e.serial for e in keeper.state.superseded] == [lost.serial]
    assert keeper.state.journal == {} and followups.calls == []


def test_defect11_no_revocation_without_proof_from_the_listener(
    keeper: IntentJournal, test_ca: OfflineCA
) -> None:
    """The read-back shows another certificate, but the listener cannot be shown to serve
    another: the certificate may be in use, so it stays in the journal, never revoked."""
    assert keeper.state is not None
    maybe = issued_cert(test_ca)
    keeper.state.journal_installing(intent("installing", "proxy", maybe))
    rotator = FakeRotator({"east": FakeCluster({})}, FakeFollowUps(), proof=False)
    errors = keeper.replay(rotator)  # type: ignore[arg-type]
    assert "not revoked" in errors[("east", "proxy")]
    assert keeper.state.superseded == []
    assert set(keeper.state.journal) == {("east", "proxy")}


def test_replay_keeps_what_it_cannot_resolve(keeper: IntentJournal, test_ca: OfflineCA) -> None:
    assert keeper.state is not None
    unknown, pending, old = issued_cert(test_ca), issued_cert(test_ca), issued_cert(test_ca)
    keeper.state.journal_installing(intent("installing", "cm", unknown))
    keeper.state.pending[("east", "proxy")] = intent("followups", "proxy", pending, old.chain_pem)
    cluster = FakeCluster({}, fail=True)
    followups = FakeFollowUps({("east", "proxy"): "crdb update failed"})
    errors = keeper.replay(FakeRotator({"east": cluster}, followups))  # type: ignore[arg-type]
    assert set(errors) == {("east", "cm"), ("east", "proxy")}
    assert {k: i.phase for k, i in keeper.state.journal.items()} == {("east", "cm"): "installing"}
    assert {k: i.phase for k, i in keeper.state.pending.items()} == {("east", "proxy"): "followups"}
    assert keeper.blocked_by_journal(T0) == {("east", "cm"), ("east", "proxy")}
    assert keeper.unresolved() == {("east", "cm")}
    cluster.fail, followups.errors = False, {}
    assert keeper.replay(FakeRotator({"east": cluster}, followups)) == {}  # type: ignore[arg-type]
    assert keeper.state.journal == {} and keeper.state.pending == {}
    assert len(followups.calls) == 2  # the follow-up ran again, nothing skipped


def test_a_new_change_keeps_the_old_certificate_of_pending_followups(test_ca: OfflineCA) -> None:
    """A -> B installed, its follow-ups pending; then B -> C: the databases still hold A, so
    once C is in, the follow-ups go from A to C (and B is superseded). Should C never go in,
    the follow-ups of A -> B are still there."""
    a, b, c = issued_cert(test_ca), issued_cert(test_ca), issued_cert(test_ca)
    key = ("east", "proxy")
    state = State()
    state.journal_installing(intent("installing", "proxy", b, a.chain_pem))
    state.journal_installed(key, T0)
    state.journal_installing(intent("installing", "proxy", c, b.chain_pem))
    assert state.pending[key].serial == b.serial  # kept while C is in flight
    lost = State(journal=dict(state.journal), pending=dict(state.pending))
    lost.orphan(lost.journal[key], T0)
    assert lost.pending[key].serial == b.serial and lost.journal == {}

    merged = state.journal_installed(key, T0 + timedelta(hours=1))
    assert merged is not None and (merged.serial, merged.old_pem) == (c.serial, a.chain_pem)
    assert [(e.serial, e.reason) for e in state.superseded] == [(b.serial, "superseded")]
    assert not state.replacement_done(state.superseded[0])  # not before A -> C is done
    state.complete(key, T0)
    assert state.replacement_done(state.superseded[0])


def test_no_new_certificate_while_an_earlier_change_is_in_the_journal(
    keeper: IntentJournal, settings: Settings, clock: Clock, test_ca: OfflineCA
) -> None:
    assert keeper.state is not None
    proxy = spec(settings, "proxy")
    b = issued_cert(test_ca)
    keeper.state.journal_installing(intent("installing", "proxy", b))
    with pytest.raises(JournalPendingError, match="not known yet"):
        keeper.before_issue(proxy)
    keeper.state.journal_installed(("east", "proxy"), T0)
    with pytest.raises(JournalPendingError, match="follow-ups of the last change"):
        keeper.before_issue(proxy)
    assert keeper.blocked_by_journal(clock()) == {("east", "proxy")}
    clock.advance(timedelta(days=28))  # less than 10% of B's 30 days left: rotate anyway
    assert keeper.blocked_by_journal(clock()) == set()
    keeper.before_issue(proxy)


def test_followups_that_ran_from_the_wrong_certificate_stay_pending(
    keeper: IntentJournal, test_ca: OfflineCA
) -> None:
    assert keeper.state is not None
    a, b, c = issued_cert(test_ca), issued_cert(test_ca), issued_cert(test_ca)
    key = ("east", "proxy")
    keeper.state.pending[key] = intent("followups", "proxy", b, a.chain_pem)
    change = Change("east", "proxy", c, InstalledCertificate.from_pem("proxy", b.chain_pem))
    keeper.before_install("east", [change])
    keeper.installed([change])
    keeper.completed([change])  # the executor's follow-ups went from B, the databases hold A
    assert keeper.state.pending[key].old_pem == a.chain_pem
    assert keeper.rotations[("east", "proxy", "success")] == 0


def test_a_second_issue_orphans_the_first(test_ca: OfflineCA) -> None:
    first, second = issued_cert(test_ca), issued_cert(test_ca)
    state = State()
    state.journal_issued(intent("issued", "proxy", first))
    state.journal_issued(intent("issued", "proxy", second))
    assert [e.serial for e in state.superseded] == [first.serial]
    assert state.journal[("east", "proxy")].serial == second.serial


def test_record_defaults() -> None:
    assert State().record(("x", "y")) == CertRecord()


def test_defect1_failing_follow_ups_hold_back_only_until_expiring(
    keeper: IntentJournal, settings: Settings, clock: Clock, test_ca: OfflineCA
) -> None:
    """Follow-ups that keep failing hold the next rotation back, are published for the
    metric, and stop holding it once the certificate is expiring."""
    from vault_bridge.agent.health import Metrics, Snapshot
    from vault_bridge.state.journal import JournalPendingError

    assert keeper.state is not None
    pending, old = issued_cert(test_ca), issued_cert(test_ca)
    keeper.state.pending[("east", "proxy")] = intent("followups", "proxy", pending, old.chain_pem)
    with pytest.raises(JournalPendingError, match="follow-ups of the last change"):
        keeper.before_issue(spec(settings, "proxy"))
    assert keeper.blocked_by_journal(clock()) == {("east", "proxy")}
    since = keeper.followups_pending()
    assert since == {("east", "proxy"): T0}
    metrics = Metrics()
    metrics.publish(Snapshot(followups_pending=since))
    text = metrics.exposition().decode()
    assert (
        'vault_bridge_followups_pending_since_timestamp_seconds{cluster="east",name="proxy"}'
        in (text)
    )
    clock.advance(timedelta(days=28))  # less than 10% of the 30-day lifetime left
    keeper.before_issue(spec(settings, "proxy"))  # renewed anyway
    assert keeper.blocked_by_journal(clock()) == set()
