"""The follow-up coordinator through its ports: fake clusters (CRDBs, databases, update tasks),
the real REST runner on them, a fake lock and a fake clock. One ``crdb update --force`` per
CRDB after the last install, the lock around the window, retries, a failed task, the tasks in
flight before the install, Replica Of updates, and step 2 alone (journal replay, the CLI)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.cluster import FakeRunner, add_crdb
from tests.fakes.world import FAST, World, make_settings
from vault_bridge.errors import FollowUpError
from vault_bridge.models.certificates import CertChange
from vault_bridge.rotation.followup_jobs import LOCK_FILE, FollowUpLock, Limits
from vault_bridge.rotation.followups import FollowUps
from vault_bridge.rotation.results import PassResult

BULK = "PUT /v1/cluster/certificates"
UPDATE = "POST /v1/crdbs/<guid>/updates"


def world(tmp_path: Path, clusters: Sequence[str] = ("east", "west")) -> World:
    return World(make_settings(tmp_path / "state", clusters, ("cm", "proxy")))


def results(result: PassResult) -> dict[str, str]:
    return {f"{o.name}@{o.cluster}": o.result for o in result.outcomes}


def errors(result: PassResult) -> dict[str, str]:
    return {f"{o.name}@{o.cluster}": o.error or "" for o in result.outcomes if o.error}


def rotate(w: World, limits: Limits = FAST) -> PassResult:
    followups = w.followups(limits)
    try:
        return w.rotator(followups=followups).run_once()
    finally:
        followups.close()


def updates(w: World) -> list[str]:
    return [e for e in w.events if e.endswith(UPDATE)]


def test_one_force_update_per_crdb_after_the_last_install(tmp_path: Path) -> None:
    w = world(tmp_path)
    add_crdb("guid-orders", "orders", list(w.clusters.values()), uid=1)
    add_crdb("guid-carts", "carts", list(w.clusters.values()), uid=2)
    result = rotate(w)
    assert set(results(result).values()) == {"installed"}
    sent = [w.clusters[c].updates for c in ("east", "west")]
    assert sorted(sent[0] + sent[1]) == ["guid-carts", "guid-orders"]  # once each, in all
    assert sent[1] == []  # through the first cluster of the CRDB (east)
    last_install = max(i for i, e in enumerate(w.events) if e.endswith(BULK))
    first_update = min(i for i, e in enumerate(w.events) if e.endswith(UPDATE))
    assert first_update > last_install
    # the lock is held from before the first install until every task finished
    assert w.events.count("lock acquired") == 1 and w.events[-1] == "lock released"
    assert w.events.index("lock acquired") < min(
        i for i, e in enumerate(w.events) if e.endswith(BULK)
    )
    assert not w.lock.held


def test_no_update_when_no_crdb_has_an_instance_on_the_changed_cluster(tmp_path: Path) -> None:
    w = world(tmp_path)
    add_crdb("guid-orders", "orders", [w.clusters["west"]])
    w.install_ours("west", "proxy")
    w.install_ours("west", "cm")
    result = rotate(w)
    assert results(result) == {"cm@east": "installed", "proxy@east": "installed"}
    assert updates(w) == []


def test_a_certificate_without_follow_ups_needs_neither_lock_nor_update(tmp_path: Path) -> None:
    w = world(tmp_path)
    add_crdb("guid-orders", "orders", list(w.clusters.values()))
    for cluster in ("east", "west"):
        w.install_ours(cluster, "proxy")
    result = rotate(w)
    assert results(result) == {"cm@east": "installed", "cm@west": "installed"}
    assert updates(w) == [] and "lock acquired" not in w.events


def test_the_lock_held_elsewhere_keeps_the_proxy_out(tmp_path: Path) -> None:
    w = world(tmp_path, ("east",))
    add_crdb("guid-orders", "orders", [w.clusters["east"]])
    w.lock.held_elsewhere = True
    result = rotate(w)
    assert results(result) == {"proxy@east": "failed", "cm@east": "installed"}
    assert "another follow-up held the lock" in errors(result)["proxy@east"]
    assert "proxy" not in w.clusters["east"].installed and updates(w) == []


def test_a_failed_task_is_retried(tmp_path: Path) -> None:
    w = world(tmp_path, ("east",))
    east = w.clusters["east"]
    add_crdb("guid-orders", "orders", [east])
    east.task_scripts["guid-orders"] = [["started", "failed"], ["started", "finished"]]
    result = rotate(w)
    assert results(result) == {"cm@east": "installed", "proxy@east": "installed"}
    assert east.updates == ["guid-orders", "guid-orders"]
    assert FAST.retry_delay in w.clock.slept


def test_a_task_that_keeps_failing_fails_the_change_naming_the_crdb(tmp_path: Path) -> None:
    w = world(tmp_path, ("east",))
    east = w.clusters["east"]
    add_crdb("guid-orders", "orders", [east])
    east.task_scripts["guid-orders"] = [["failed"]]
    result = rotate(w)
    assert results(result) == {"cm@east": "installed", "proxy@east": "failed"}
    error = errors(result)["proxy@east"]
    assert error.startswith("follow-up failed: CRDB guid-orders (orders)")
    assert f"failed {FAST.attempts} times through east (rest)" in error
    assert "crdt_error: the update failed" in error
    assert len(east.updates) == FAST.attempts
    assert "proxy" in east.installed  # step 1 happened; the journal keeps step 2 pending


def test_a_task_that_never_finishes_times_out_on_the_fake_clock(tmp_path: Path) -> None:
    w = world(tmp_path, ("east",))
    east = w.clusters["east"]
    add_crdb("guid-orders", "orders", [east])
    east.task_scripts["guid-orders"] = [["started"]]
    result = rotate(w, Limits(task_timeout=5.0, attempts=2, retry_delay=1.0, poll=0.5))
    assert "did not finish within 5s" in errors(result)["proxy@east"]
    assert len(east.updates) == 2


def test_an_update_in_flight_is_awaited_before_the_install(tmp_path: Path) -> None:
    w = world(tmp_path, ("east",))
    east = w.clusters["east"]
    add_crdb("guid-orders", "orders", [east])
    east.busy["guid-orders"] = 2
    result = rotate(w)
    assert results(result) == {"cm@east": "installed", "proxy@east": "installed"}
    assert w.clock.slept[:2] == [FAST.poll, FAST.poll]
    polls = [i for i, e in enumerate(w.events) if e.endswith("GET /v1/crdb_tasks")]
    assert len(polls) >= 3 and polls[2] < w.events.index(f"east: {BULK}")


def test_an_update_that_stays_in_flight_keeps_the_proxy_out(tmp_path: Path) -> None:
    w = world(tmp_path, ("east",))
    east = w.clusters["east"]
    add_crdb("guid-orders", "orders", [east])
    east.busy["guid-orders"] = 1000
    result = rotate(w)
    assert results(result) == {"proxy@east": "failed", "cm@east": "installed"}
    assert "still in flight after 2s" in errors(result)["proxy@east"]
    assert east.updates == [] and "proxy" not in east.installed


def test_a_cluster_whose_crdbs_cannot_be_listed_keeps_its_proxy(tmp_path: Path) -> None:
    w = world(tmp_path)
    west = w.clusters["west"]
    add_crdb("guid-orders", "orders", list(w.clusters.values()))
    west.fail["GET /v1/crdbs"] = [west.error(503, "the node is not answering")]
    result = rotate(w)
    assert results(result)["proxy@west"] == "failed"
    assert "follow-ups not ready" in errors(result)["proxy@west"]
    # east's follow-ups wait (a replica on the unreadable west could be missed): the failure
    # is west's, reported against west; east's proxy went in and stays pending
    assert results(result)["proxy@east"] == "installed"
    assert "wait until the databases of west" in result.cluster_errors["west"]
    assert not result.ok
    assert results(result)["cm@west"] == results(result)["cm@east"] == "installed"


class Window:
    def __init__(self) -> None:
        self.observed: list[tuple[str, str, float]] = []

    def labels(self, *, cluster: str, stage: str) -> Any:
        window = self

        class Child:
            def observe(self, value: float) -> None:
                window.observed.append((cluster, stage, value))

        return Child()


class Metrics:
    def __init__(self) -> None:
        self.window = Window()

    @property
    def followup_window(self) -> Window:
        return self.window


def test_the_window_is_measured_from_the_install(tmp_path: Path) -> None:
    w = world(tmp_path, ("east",))
    add_crdb("guid-orders", "orders", [w.clusters["east"]])
    followups = w.followups()
    followups.metrics = Metrics()
    w.rotator(followups=followups).run_once()
    window = followups.last_windows["east"]
    assert 0 <= window["request_sent"] <= window["finished"]
    assert window["finished"] >= 0.02  # the runner's first poll, on the fake clock
    assert {(c, s) for c, s, _ in followups.metrics.window.observed} == {
        ("east", "request_sent"),
        ("east", "finished"),
    }


def change(w: World, cluster: str, name: str, old: str | None) -> CertChange:
    new = w.leaf(w.vault.ca("pki_int"), f"{name}.{cluster}.example.com")
    w.clusters[cluster].install_pem(name, new)
    return CertChange(cluster, name, new, old)


def test_step_2_alone_for_a_journal_replay_runs_once(tmp_path: Path) -> None:
    w = world(tmp_path)
    add_crdb("guid-orders", "orders", list(w.clusters.values()))
    changes = [change(w, "east", "proxy", None), change(w, "west", "proxy", None)]
    followups = w.followups()
    assert followups.run(changes) == {}
    assert updates(w) == ["east: " + UPDATE]
    assert followups.run(changes) == {}  # idempotent: once more, still one per CRDB
    assert len(updates(w)) == 2 and not w.lock.held


def test_step_2_alone_reports_a_failure_by_change(tmp_path: Path) -> None:
    w = world(tmp_path, ("east",))
    east = w.clusters["east"]
    add_crdb("guid-orders", "orders", [east])
    # each attempt posts twice at most (the second time with the same X-Task-ID, once the
    # task is not found): every one of them fails
    east.fail[UPDATE] = [east.error(500, "internal error")] * (2 * FAST.attempts)
    failed = w.followups().run([change(w, "east", "proxy", None)])
    assert list(failed) == [("east", "proxy")]
    assert "POST /v1/crdbs/guid-orders/updates failed" in failed[("east", "proxy")]


def test_vault_bridge_follow_up_updates_every_crdb_and_reports_by_guid(tmp_path: Path) -> None:
    w = world(tmp_path)
    add_crdb("guid-orders", "orders", list(w.clusters.values()), uid=1)
    add_crdb("guid-carts", "carts", [w.clusters["west"]], uid=2)
    w.clusters["west"].task_scripts["guid-carts"] = [["failed"]]
    report = w.followups().run_crdb_updates()
    assert sorted(s.guid for s in report.steps) == ["guid-carts", "guid-orders"]
    assert list(report.errors) == ["guid-carts"]
    assert w.clusters["east"].updates == ["guid-orders"]
    assert w.clusters["west"].updates == ["guid-carts"] * FAST.attempts


def test_vault_bridge_follow_up_names_a_cluster_it_cannot_read(tmp_path: Path) -> None:
    w = world(tmp_path)
    west = w.clusters["west"]
    west.fail["GET /v1/crdbs"] = [west.error(401, "authentication failed")]
    report = w.followups().run_crdb_updates(["west"])
    assert list(report.errors) == ["west"] and report.steps == ()


def replica(source_proxy: str, status: str = "in-sync") -> dict[str, Any]:
    return {
        "uid": 7,
        "uri": "redis://admin:not-a-secret@east.example.com:12000",
        "server_cert": source_proxy,
        "status": status,
        "lag": 0,
        "compression": 3,
    }


def test_a_source_proxy_change_sets_the_new_server_cert_on_the_replica(tmp_path: Path) -> None:
    w = world(tmp_path)
    old_proxy = w.install_ours("east", "proxy")
    w.install_ours("west", "proxy")
    w.install_ours("west", "cm")
    west = w.clusters["west"]
    west.bdb_json[3] = {"uid": 3, "name": "orders-copy", "replica_sources": [replica(old_proxy)]}
    w.clusters["east"].bdb_json[1] = {"uid": 1, "name": "orders"}
    w.clock.advance(40 * 86400)  # east's certificates are expired now: both renewed
    result = rotate(w)
    assert results(result)["proxy@east"] == "installed"
    entry = west.bdb_json[3]["replica_sources"][0]
    assert entry["server_cert"] == w.clusters["east"].installed["proxy"]
    assert entry["compression"] == 3 and "status" not in entry  # writable fields kept as read
    assert "west: PUT /v1/bdbs/<uid>" in w.events


def test_a_destination_syncer_change_swaps_the_sources_client_certificate(
    tmp_path: Path,
) -> None:
    w = World(make_settings(tmp_path / "state", ("east", "west"), ("syncer",)))
    east_proxy = w.install_ours("east", "proxy")
    w.install_ours("east", "syncer")
    old_syncer = w.install_foreign("west", "syncer")
    east = w.clusters["east"]
    east.bdb_json[1] = {
        "uid": 1,
        "name": "orders",
        "authentication_ssl_client_certs": [{"client_cert": old_syncer}],
    }
    w.clusters["west"].bdb_json[3] = {
        "uid": 3,
        "name": "orders-copy",
        "replica_sources": [replica(east_proxy)],
    }
    result = rotate(w)
    assert results(result) == {"syncer@west": "installed"}
    new_syncer = w.clusters["west"].installed["syncer"]
    trusted = [c["client_cert"] for c in east.bdb_json[1]["authentication_ssl_client_certs"]]
    assert trusted == [new_syncer]
    # added first (both trusted while the replicas catch up), the old one removed after
    assert w.requests("east").count("PUT /v1/bdbs/<uid>") == 2


def test_a_crdb_is_still_updated_when_one_of_its_clusters_failed_to_install(
    tmp_path: Path,
) -> None:
    w = world(tmp_path)
    add_crdb("guid-orders", "orders", list(w.clusters.values()))
    w.clusters["west"].reject = {"proxy"}
    result = rotate(w)
    assert results(result)["proxy@east"] == "installed"
    assert results(result)["proxy@west"] == "failed"
    assert w.clusters["east"].updates == ["guid-orders"]  # syncs what is installed


def test_no_database_update_for_an_install_that_failed(tmp_path: Path) -> None:
    w = world(tmp_path)
    old_proxy = w.install_ours("east", "proxy", lifetime=timedelta(days=1))
    west = w.clusters["west"]
    w.install_ours("west", "proxy")
    w.install_ours("west", "cm")
    west.bdb_json[3] = {"uid": 3, "name": "orders-copy", "replica_sources": [replica(old_proxy)]}
    w.clusters["east"].reject = {"proxy"}
    result = rotate(w)
    assert results(result)["proxy@east"] == "failed"
    assert "west: PUT /v1/bdbs/<uid>" not in w.events
    assert west.bdb_json[3]["replica_sources"][0]["server_cert"] == old_proxy


def test_the_old_syncer_certificate_goes_even_if_a_replica_never_reports_in_sync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = World(make_settings(tmp_path / "state", ("east", "west"), ("syncer",)))
    east_proxy = w.install_ours("east", "proxy")
    w.install_ours("east", "syncer")
    old_syncer = w.install_foreign("west", "syncer")
    east = w.clusters["east"]
    east.bdb_json[1] = {
        "uid": 1,
        "name": "orders",
        "authentication_ssl_client_certs": [{"client_cert": old_syncer}],
    }
    w.clusters["west"].bdb_json[3] = {
        "uid": 3,
        "name": "orders-copy",
        "replica_sources": [replica(east_proxy, status="syncing")],
    }
    limits = Limits(in_sync_wait=10.0, poll=1.0, task_timeout=10.0)
    result = rotate(w, limits)
    assert results(result) == {"syncer@west": "installed"}
    trusted = [c["client_cert"] for c in east.bdb_json[1]["authentication_ssl_client_certs"]]
    assert trusted == [w.clusters["west"].installed["syncer"]]
    assert w.clock.slept.count(1.0) >= 10  # polled in-sync on the fake clock, then gave up
    assert "not in-sync after 10s" in caplog.text


def test_an_injected_runner_carries_step_2(tmp_path: Path) -> None:
    w = World(
        make_settings(
            tmp_path / "state",
            ("east",),
            ("proxy",),
            cluster_keys={"east": {"crdb_update": "crdb-cli"}},
        )
    )
    add_crdb("guid-orders", "orders", [w.clusters["east"]])
    runner = FakeRunner(w.events)
    runner.fail = [FollowUpError("`crdb-cli crdb update` exited 1")]
    followups = FollowUps(
        w.settings,
        w.clusters,
        clock=w.clock.monotonic,
        sleep=w.clock.sleep,
        lock=w.lock,
        limits=FAST,
        runners={"east": runner},
    )
    result = w.rotator(followups=followups).run_once()
    assert results(result) == {"proxy@east": "installed"}
    assert runner.warmed == ["guid-orders"] and runner.updated == ["guid-orders"] * 2
    assert w.clusters["east"].updates == []  # not through the REST API


def test_crdb_update_none_leaves_step_2_to_the_operator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = World(
        make_settings(
            tmp_path / "state",
            ("east",),
            ("proxy",),
            cluster_keys={"east": {"crdb_update": "none"}},
        )
    )
    add_crdb("guid-orders", "orders", [w.clusters["east"]])
    result = rotate(w)
    assert results(result) == {"proxy@east": "installed"}
    assert updates(w) == []
    assert "run `crdb-cli crdb update --crdb-guid guid-orders --force` now" in caplog.text


def test_the_follow_up_lock_is_one_per_process_and_per_state_directory(tmp_path: Path) -> None:
    first, second = FollowUpLock(tmp_path), FollowUpLock(tmp_path)
    assert first.acquire(True, 0)
    assert (tmp_path / LOCK_FILE).stat().st_mode & 0o777 == 0o600
    assert not second.acquire(True, 0)  # no wait: the bound is zero
    first.release()
    assert second.acquire(True, 0)
    second.release()


def test_the_follow_up_lock_respects_another_process(tmp_path: Path) -> None:
    lock = FollowUpLock(tmp_path)
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a `vault-bridge follow-up` would
        assert not lock.acquire(False)
    finally:
        os.close(fd)
    assert lock.acquire(False)  # the process lock was given back on the way out
    lock.release()


def test_an_unusable_state_directory_leaves_the_process_lock(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    lock = FollowUpLock(blocker / "state")
    assert lock.acquire(False)
    assert not FollowUpLock(None).acquire(True, 0)
    lock.release()
