"""Active-Active and Replica Of follow-ups: real OpenBao, two simulated clusters sharing one
database world, the real rotation path, the three step 2 runners and the agent after kill -9.

The simulator's sync-health model (:mod:`vault_bridge_lab.simulator.world`) makes the outage
visible: each affected CRDB or replica rejects sync from the install until its follow-up is
done, and the tests assert those outages, not only that requests were made.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from vault_bridge_lab.lab import (
    ADMIN,
    ADMIN_PASSWORD,
    PASSWORD_ENV,
    cluster_table,
    lab_config,
    to_toml,
)
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import DatabaseWorld, Outage, SimulatedCluster

from tests.conftest import make_ca, register_secret
from tests.integration import docker_helpers
from tests.state_files import read_state
from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.agent.health import Metrics
from vault_bridge.cli.main import cli
from vault_bridge.config.loading import parse_config
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.install import CertUpload
from vault_bridge.models.certificates import CertChange, CertificateInfo
from vault_bridge.rotation.app import App, build
from vault_bridge.rotation.followups import FollowUps, Limits

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
CRDB_CLI = REPO / "lab" / "vault_bridge_lab" / "crdb-cli"
BULK = "/v1/cluster/certificates"
FAST = Limits(retry_delay=0.05, in_flight_wait=5.0, in_sync_wait=5.0, task_timeout=10.0)
AGENT = [sys.executable, "-m", "vault_bridge"]
OUTAGE_BOUND = 2.0  # seconds: generous for a loaded CI machine; typical is tens of ms


def updates_path(guid: str) -> str:
    return f"/v1/crdbs/{guid}/updates"


pytestmark = pytest.mark.usefixtures("lab_env")


@pytest.fixture
def world() -> DatabaseWorld:
    return DatabaseWorld(queued_time=0.005, run_time=0.03, resync_time=0.05)


@pytest.fixture
def east(world: DatabaseWorld) -> Iterator[SimulatedCluster]:
    with SimulatedCluster("east", world=world) as sim:
        yield sim


@pytest.fixture
def west(world: DatabaseWorld) -> Iterator[SimulatedCluster]:
    with SimulatedCluster("west", world=world) as sim:
        yield sim


def settings_for(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    sims: list[SimulatedCluster],
    *,
    names: tuple[str, ...] = ("proxy", "syncer"),
    per_cluster: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    tables = [
        cluster_table(s, tmp_path, role="redis", names=names, **(per_cluster or {}).get(s.name, {}))
        for s in sims
    ]
    doc = lab_config(
        openbao,
        pki,
        tables,
        state_dir=tmp_path / "state",
        defaults={"key_type": "ec", "key_bits": 256, "ttl": "720h"},
    )
    return parse_config(doc)


def make_app(
    settings: Settings, *, limits: Limits = FAST, metrics: Metrics | None = None
) -> tuple[App, FollowUps]:
    followups = FollowUps(settings, None, limits=limits, metrics=metrics)
    return build(settings, sleep=lambda s: None, followups=followups), followups


def posts(sim: SimulatedCluster, guid: str | None = None) -> list[float]:
    """Arrival times of step 2 requests (of one CRDB, or of any)."""
    return [
        r.at
        for r in sim.requests
        if r.method == "POST"
        and r.path.startswith("/v1/crdbs/")
        and (guid is None or r.path == updates_path(guid))
    ]


def installs(sim: SimulatedCluster) -> list[float]:
    return [r.at for r in sim.requests if r.method == "PUT" and r.path == BULK and r.status == 200]


def outages_of(world: DatabaseWorld, key: str) -> list[Outage]:
    return [o for o in world.outages() if o.key == key]


def assert_closed(outages: list[Outage], bound: float = OUTAGE_BOUND) -> None:
    assert outages, "no outage recorded: the install did not break sync?"
    for outage in outages:
        assert outage.end is not None, f"{outage.name} still rejecting: {outage.reason}"
        assert outage.length is not None and 0 < outage.length < bound, outage


# -- Active-Active -----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3, 20])
def test_crdbs_across_two_clusters_updated_once_each_after_both_installs(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    west: SimulatedCluster,
    count: int,
) -> None:
    """Both clusters' proxy and syncer due in one pass: install on both, then ONE update per
    CRDB (the documented multi-cluster form), each CRDB rejecting sync once, briefly."""
    spans = [[east, west], [east], [west]]
    members = {}
    for i in range(count):
        span = spans[i % 3] if count > 1 else [east, west]
        members[east.add_crdb(f"db{i}", participants=span)] = span
    metrics = Metrics()
    app, followups = make_app(settings_for(openbao, pki, tmp_path, [east, west]), metrics=metrics)
    with app:
        result = app.rotator.run_once()
    assert result.ok, result.summary()
    assert sorted((o.cluster, o.name) for o in result.outcomes) == [
        ("east", "proxy"),
        ("east", "syncer"),
        ("west", "proxy"),
        ("west", "syncer"),
    ]
    for guid, span in members.items():
        sent = posts(east, guid) + posts(west, guid)
        assert len(sent) == 1, f"CRDB {guid}: {len(sent)} updates"
        last_install = max(t for sim in span for t in installs(sim))
        assert sent[0] > last_install  # after its clusters' installs, never in between
        assert world.crdb_in_sync(guid)
        assert all(t["status"] == "finished" for t in world.tasks(guid))
        outages = outages_of(world, guid)
        assert len(outages) == 1, outages  # one outage per CRDB, not one per cluster
        assert_closed(outages)
    # The window, measured and exported per cluster and stage.
    for cluster in ("east", "west"):
        window = followups.last_windows[cluster]
        assert 0 < window["request_sent"] <= window["finished"] < OUTAGE_BOUND
        for stage in ("request_sent", "finished"):
            count_value = metrics.registry.get_sample_value(
                "vault_bridge_followup_window_seconds_count", {"cluster": cluster, "stage": stage}
            )
            assert count_value == 1


def test_single_cluster_change_updates_every_crdb_with_an_instance_there(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    west: SimulatedCluster,
) -> None:
    shared = east.add_crdb("shared", participants=[east, west])
    west_only = west.add_crdb("west-only", participants=[west])
    settings = settings_for(openbao, pki, tmp_path, [east, west], names=("proxy",))
    app, _ = make_app(settings)
    with app:
        result = app.rotator.run_once(only={("east", "proxy")})
    assert result.ok, result.summary()
    assert len(posts(east, shared)) == 1 and posts(west, shared) == []
    assert posts(west, west_only) == []  # nothing changed on west
    assert outages_of(world, west_only) == []
    assert_closed(outages_of(world, shared))


RUNNERS = [
    pytest.param("rest", id="rest"),
    pytest.param("crdb-cli", id="crdb-cli"),
    pytest.param("docker", id="docker", marks=pytest.mark.docker),
]


@pytest.fixture
def runner_config(
    request: pytest.FixtureRequest, east: SimulatedCluster, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """The cluster keys selecting ``request.param``'s runner for ``east``."""
    kind = request.param
    if kind == "rest":
        yield {"crdb_update": "rest"}
    elif kind == "crdb-cli":
        yield {"crdb_update": "crdb-cli", "crdb_cli_path": str(crdb_cli_for(east, tmp_path))}
    else:
        container = request.getfixturevalue("crdb_cli_container")
        yield {
            "crdb_update": "docker",
            "docker_container": container,
            "crdb_cli_path": docker_helpers.CRDB_CLI_IN_IMAGE,
        }


def crdb_cli_for(sim: SimulatedCluster, tmp_path: Path) -> Path:
    """A per-cluster crdb-cli wrapper: the stand-in, pointed at ``sim`` by a config file."""
    ca = tmp_path / f"{sim.name}-crdb-cli-ca.pem"
    ca.write_text(sim.api_ca_pem())
    config = tmp_path / f"{sim.name}-crdb-cli.json"
    config.write_text(
        json.dumps(
            {
                "url": sim.api_url,
                "username": ADMIN,
                "password_env": PASSWORD_ENV,
                "ca_file": str(ca),
            }
        )
    )
    wrapper = tmp_path / f"{sim.name}-crdb-cli"
    wrapper.write_text(
        f'#!/bin/sh\nCRDB_CLI_CONFIG={config} CRDB_CLI_PYTHON={sys.executable} exec {CRDB_CLI} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture
def crdb_cli_container(east: SimulatedCluster) -> Iterator[str]:
    """A container of the crdb-cli image on the host network, pointed at ``east``."""
    with docker_helpers.crdb_cli_container(
        {
            "CRDB_CLI_URL": east.api_url,
            "CRDB_CLI_USERNAME": ADMIN,
            "CRDB_CLI_PASSWORD": ADMIN_PASSWORD,
            "CRDB_CLI_CA_PEM": east.api_ca_pem(),
        }
    ) as name:
        yield name


@pytest.mark.parametrize("runner_config", RUNNERS, indirect=True)
def test_each_runner_runs_step_2_and_ends_the_outage(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    west: SimulatedCluster,
    runner_config: dict[str, Any],
) -> None:
    guids = [east.add_crdb(f"db{i}", participants=[east, west]) for i in range(3)]
    settings = settings_for(
        openbao, pki, tmp_path, [east, west], names=("proxy",), per_cluster={"east": runner_config}
    )
    app, _ = make_app(settings)
    with app:
        result = app.rotator.run_once(only={("east", "proxy")})
    assert result.ok, result.summary()
    for guid in guids:
        assert len(posts(east, guid)) == 1
        assert world.crdb_in_sync(guid)
        assert_closed(outages_of(world, guid), bound=10.0)  # crdb-cli: a process per CRDB


def test_failed_task_is_retried_then_succeeds(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    guid = east.add_crdb("flaky")
    other = east.add_crdb("fine")
    world.fail_tasks(guid, times=1)
    app, _ = make_app(settings_for(openbao, pki, tmp_path, [east], names=("proxy",)))
    with app, caplog.at_level(logging.WARNING):
        result = app.rotator.run_once()
    assert result.ok, result.summary()
    assert [t["status"] for t in world.tasks(guid)] == ["failed", "finished"]
    assert len(posts(east, other)) == 1
    assert world.crdb_in_sync(guid)
    assert any(f"CRDB {guid} (flaky): step 2 attempt 1 of 3 failed" in m for m in caplog.messages)


@pytest.mark.parametrize("kind", ["rest", "crdb-cli"])
def test_task_failing_every_time_is_an_error_naming_the_guid(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    kind: str,
) -> None:
    guid = east.add_crdb("broken")
    world.fail_tasks(guid, times=3, description="peer unreachable")
    extra: dict[str, Any] = {"crdb_update": kind}
    if kind == "crdb-cli":
        extra["crdb_cli_path"] = str(crdb_cli_for(east, tmp_path))
    settings = settings_for(
        openbao, pki, tmp_path, [east], names=("proxy",), per_cluster={"east": extra}
    )
    app, _ = make_app(settings)
    with app:
        result = app.rotator.run_once()
    [failed] = result.failed
    assert (failed.cluster, failed.name) == ("east", "proxy")
    assert failed.error is not None
    assert f"CRDB {guid} (broken)" in failed.error
    assert "failed 3 times" in failed.error
    assert "peer unreachable" in failed.error
    if kind == "crdb-cli":  # the tool's output is attached
        assert "-> failed" in failed.error and "Task " in failed.error
    assert len(posts(east, guid)) == 3
    # Installed all the same (step 1 happened); the CRDB still rejects sync.
    assert not world.crdb_in_sync(guid)


def test_task_timeout_is_retried_then_an_error_naming_the_guid(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
) -> None:
    guid = east.add_crdb("slow")
    world.run_time = 30.0  # every update task now runs far longer than the bound
    limits = Limits(task_timeout=0.3, attempts=2, retry_delay=0.01)
    app, _ = make_app(settings_for(openbao, pki, tmp_path, [east], names=("proxy",)), limits=limits)
    with app:
        result = app.rotator.run_once()
    [failed] = result.failed
    assert failed.error is not None
    assert f"CRDB {guid} (slow)" in failed.error and "failed 2 times" in failed.error
    assert "did not finish within 0.3s (last status started)" in failed.error
    assert len(posts(east, guid)) == 2


def test_task_in_flight_before_step_1_is_waited_for(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
) -> None:
    guid = east.add_crdb("busy")
    started = time.monotonic()
    task_id = world.start_task(guid, via=east, run_time=0.6)
    app, _ = make_app(settings_for(openbao, pki, tmp_path, [east], names=("proxy",)))
    with app:
        result = app.rotator.run_once()
    assert result.ok, result.summary()
    [install] = installs(east)
    assert install >= started + 0.6  # not before the running update finished
    assert [t["status"] for t in world.tasks(guid)] == ["finished", "finished"]
    assert world.tasks(guid)[0]["id"] == task_id
    assert posts(east, guid)[0] > install
    assert_closed(outages_of(world, guid))


def test_task_in_flight_too_long_keeps_the_old_certificate(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
) -> None:
    guid = east.add_crdb("stuck")
    world.start_task(guid, via=east, run_time=30)
    before = east.installed_pem("proxy")
    limits = Limits(in_flight_wait=0.3, retry_delay=0.05)
    settings = settings_for(openbao, pki, tmp_path, [east], names=("proxy", "cm"))
    app, _ = make_app(settings, limits=limits)
    with app:
        result = app.rotator.run_once()
    [failed] = result.failed
    assert failed.name == "proxy" and failed.error is not None
    assert f"update of CRDB {guid} is still in flight" in failed.error
    assert east.installed_pem("proxy") == before  # never installed in between
    assert {o.name for o in result.outcomes if o.result == "installed"} == {"cm"}
    assert posts(east) == []
    assert outages_of(world, guid) == []


# -- Replica Of --------------------------------------------------------------------------------

SOURCE_FIELDS: dict[str, Any] = {
    "compression": 6,
    "replication_tls_sni": "source.example.com",
    "client_key": "replica-client-key-not-a-real-key",
}


def test_replica_of_source_proxy_change_updates_destinations_on_both_clusters(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    west: SimulatedCluster,
) -> None:
    register_secret(SOURCE_FIELDS["client_key"])
    source = east.add_bdb("orders")
    remote = west.add_bdb(
        "orders-replica", replica_of=[(east, source)], source_fields=SOURCE_FIELDS
    )
    local = east.add_bdb("orders-local-replica", replica_of=[(east, source)])
    unrelated = west.add_bdb("unrelated")
    before = {uid: (sim, sim.bdb(uid)) for sim, uid in ((west, remote), (east, local))}
    settings = settings_for(openbao, pki, tmp_path, [east, west], names=("proxy",))
    app, _ = make_app(settings)
    with app:
        result = app.rotator.run_once(only={("east", "proxy")})
    assert result.ok, result.summary()
    new_proxy = CertificateInfo.from_pem(east.installed_pem("proxy")).fingerprint
    for _uid, (sim, old) in before.items():
        now = sim.bdb(old["uid"])
        [entry] = now["replica_sources"]
        [old_entry] = old["replica_sources"]
        assert CertificateInfo.from_pem(entry["server_cert"]).fingerprint == new_proxy
        for key in ("uid", "uri", "encryption", "client_cert", "client_key", "compression"):
            assert entry[key] == old_entry[key], key  # every other field kept
        assert entry["replication_tls_sni"] == old_entry["replication_tls_sni"]
    assert west.bdb(remote)["replica_sources"][0]["compression"] == 6
    puts = [r.path for r in west.requests if r.method == "PUT" and r.path.startswith("/v1/bdbs")]
    assert puts == [f"/v1/bdbs/{remote}"]  # the unrelated database untouched
    assert f"/v1/bdbs/{unrelated}" not in puts
    replica_outages = world.outages("replica")
    assert len(replica_outages) == 2
    assert_closed(replica_outages)


def test_replica_of_destination_syncer_change_swaps_the_client_certificate(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    west: SimulatedCluster,
) -> None:
    other_cert, _ = make_ca("Other CA").leaf("syncer.elsewhere")
    source = east.add_bdb("orders", client_certs=[other_cert])
    replica = west.add_bdb("orders-replica", replica_of=[(east, source)])
    old_syncer = west.installed_pem("syncer")
    settings = settings_for(openbao, pki, tmp_path, [east, west], names=("syncer",))
    app, _ = make_app(settings)
    with app:
        result = app.rotator.run_once(only={("west", "syncer")})
    assert result.ok, result.summary()
    fps = [
        CertificateInfo.from_pem(c["client_cert"]).fingerprint
        for c in east.bdb(source)["authentication_ssl_client_certs"]
    ]
    new_syncer = CertificateInfo.from_pem(west.installed_pem("syncer")).fingerprint
    assert fps == [
        CertificateInfo.from_pem(other_cert).fingerprint,  # an unrelated certificate stays
        new_syncer,
    ]
    assert CertificateInfo.from_pem(old_syncer).fingerprint not in fps
    # Added first, removed once the replica was in-sync again: two PUTs on the source.
    source_puts = [r for r in east.requests if r.method == "PUT" and r.path == f"/v1/bdbs/{source}"]
    assert len(source_puts) == 2
    assert west.bdb(replica)["replica_sources"][0]["status"] == "in-sync"
    assert_closed(world.outages("replica"))


def test_replica_update_waits_for_its_own_install_not_its_clusters(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    west: SimulatedCluster,
) -> None:
    """proxy and syncer due on east; the proxy install fails, the syncer one succeeds: the
    replica must keep trusting the proxy certificate east still serves."""
    guid = east.add_crdb("aa", participants=[east, west])
    source = east.add_bdb("orders")
    replica = west.add_bdb("orders-replica", replica_of=[(east, source)])
    server_cert = west.bdb(replica)["replica_sources"][0]["server_cert"]
    # The bulk request fails, and so does proxy alone when sent one by one; syncer goes in.
    east.inject_fault(
        "PUT", BULK, 400, times=2, body={"error_code": "invalid_certificate", "description": "x"}
    )
    settings = settings_for(openbao, pki, tmp_path, [east, west], names=("proxy", "syncer"))
    app, _ = make_app(settings)
    with app:
        result = app.rotator.run_once(only={("east", "proxy"), ("east", "syncer")})
    assert [(o.name, o.result) for o in result.outcomes] == [
        ("proxy", "failed"),
        ("syncer", "installed"),
    ]
    assert west.bdb(replica)["replica_sources"][0]["server_cert"] == server_cert
    assert [r for r in west.requests if r.method == "PUT"] == []
    assert world.outages("replica") == []
    assert len(posts(east, guid)) == 1  # the syncer change still needs its CRDB update
    assert world.crdb_in_sync(guid)


def test_replica_of_unmanaged_destination_is_a_warning_naming_the_database(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    foreign_syncer, _ = make_ca("Unmanaged cluster CA").leaf("syncer.unmanaged.example.com")
    east.add_bdb("exported", client_certs=[foreign_syncer])
    app, _ = make_app(settings_for(openbao, pki, tmp_path, [east], names=("proxy",)))
    with app, caplog.at_level(logging.WARNING):
        result = app.rotator.run_once()
    assert result.ok, result.summary()
    [warning] = [m for m in caplog.messages if "does not manage" in m]
    assert "database exported (uid 1) on east" in warning
    assert "syncer.unmanaged.example.com" in warning


def test_replica_of_409_is_retried_and_406_names_the_database(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    west: SimulatedCluster,
) -> None:
    source = east.add_bdb("orders")
    busy = west.add_bdb("busy-replica", replica_of=[(east, source)])
    picky = west.add_bdb("picky-replica", replica_of=[(east, source)])
    west.inject_fault("PUT", f"/v1/bdbs/{busy}", 409, times=2)
    west.inject_fault(
        "PUT",
        f"/v1/bdbs/{picky}",
        406,
        body={"error_code": "invalid_certificate", "description": "server_cert rejected"},
    )
    settings = settings_for(openbao, pki, tmp_path, [east, west], names=("proxy",))
    app, _ = make_app(settings)
    with app:
        result = app.rotator.run_once(only={("east", "proxy")})
    [failed] = result.failed
    assert failed.error is not None
    assert "replica picky-replica (uid" in failed.error and "HTTP 406" in failed.error
    assert "busy-replica" not in failed.error
    statuses = [
        r.status for r in west.requests if r.path == f"/v1/bdbs/{busy}" and r.method == "PUT"
    ]
    assert statuses == [409, 409, 200]
    assert west.bdb(busy)["replica_sources"][0]["status"] in ("syncing", "in-sync")


# -- replay, CLI ------------------------------------------------------------------------------


def test_run_from_public_pems_alone_is_idempotent(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    west: SimulatedCluster,
) -> None:
    """What a journal replay does: install by hand, then ``run`` twice with the CertChange."""
    guid = east.add_crdb("aa", participants=[east, west])
    source = east.add_bdb("orders")
    replica = west.add_bdb("orders-replica", replica_of=[(east, source)])
    settings = settings_for(openbao, pki, tmp_path, [east, west], names=("proxy",))
    old = east.installed_pem("proxy")
    cert, key = make_ca("Hand CA").leaf("proxy.east.example.com")
    with ClusterClient(settings.cluster("east")) as client:
        client.put_certificates([CertUpload("proxy", cert, key)])
    assert world.rejecting() != []
    change = CertChange("east", "proxy", cert, old)
    followups = FollowUps(settings, None, limits=FAST)
    try:
        assert followups.run([change]) == {}
        assert followups.run([change]) == {}  # again: harmless
    finally:
        followups.close()
    assert len(posts(east, guid)) == 2  # step 2 again (a forced update changes nothing)
    replica_puts = [r for r in west.requests if r.method == "PUT" and r.path.startswith("/v1/bdbs")]
    assert len(replica_puts) == 1  # the replica already held the new certificate
    assert west.bdb(replica)["replica_sources"][0]["server_cert"] == cert
    assert world.rejecting() == []


def test_follow_up_command_runs_step_2_for_a_certificate_installed_by_hand(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
    west: SimulatedCluster,
) -> None:
    guid = east.add_crdb("aa", participants=[east, west])
    west_only = west.add_crdb("west-only", participants=[west])
    settings = settings_for(openbao, pki, tmp_path, [east, west], names=("proxy",))
    config = tmp_path / "config.toml"
    doc = lab_config(
        openbao,
        pki,
        [cluster_table(s, tmp_path, role="redis", names=("proxy",)) for s in (east, west)],
        state_dir=tmp_path / "state",
    )
    config.write_text(to_toml(doc))
    cert, key = make_ca("Hand CA").leaf("proxy.east.example.com")
    with ClusterClient(settings.cluster("east")) as client:
        client.put_certificates([CertUpload("proxy", cert, key)])
    assert not world.crdb_in_sync(guid)
    runner = CliRunner()
    done = runner.invoke(cli, ["--config", str(config), "follow-up", "--cluster", "east"])
    assert done.exit_code == 0, done.output
    assert f"{guid} aa (through east): updated" in done.output
    assert world.crdb_in_sync(guid)
    assert posts(west, west_only) == []
    unknown = runner.invoke(cli, ["--config", str(config), "follow-up", "--cluster", "easst"])
    assert unknown.exit_code == 2
    assert "did you mean 'east'" in unknown.output


# -- the agent killed between step 1 and step 2 -----------------------------------------------


@pytest.mark.fault("crash")
def test_agent_killed_between_step_1_and_step_2_runs_step_2_first_on_restart(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    world: DatabaseWorld,
    east: SimulatedCluster,
) -> None:
    guid = east.add_crdb("aa")
    state_dir = tmp_path / "state"
    doc = lab_config(
        openbao,
        pki,
        [cluster_table(east, tmp_path, role="redis", names=("proxy",))],
        state_dir=state_dir,
        defaults={"key_type": "ec", "key_bits": 256, "ttl": "720h"},
        agent={"resync_interval": "10m", "max_issues_per_hour": 100},
    )
    config = tmp_path / "config.toml"
    config.write_text(to_toml(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(VAULT_TOKEN=openbao.root_token, **{PASSWORD_ENV: ADMIN_PASSWORD})
    # Hold the agent between the steps: its step 2 request waits 3 s on the cluster.
    east.inject_fault("POST", updates_path(guid), 0, delay=3.0)
    log_dir = Path(os.environ.get("VAULT_BRIDGE_TEST_LOG_DIR") or tmp_path)

    def start(label: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = log_dir / f"followup-agent-{label}-{os.getpid()}-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*AGENT, "--config", str(config), "--log-format", "json", "run"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return proc, log

    def journal() -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = read_state(state_dir).get("journal", [])
        return entries

    first, first_log = start("first")
    try:
        deadline = time.monotonic() + 60
        while not (installs(east) and [e["phase"] for e in journal()] == ["followups"]):
            assert first.poll() is None, first_log.read_text()[-3000:]
            assert time.monotonic() < deadline, first_log.read_text()[-3000:]
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert not world.crdb_in_sync(guid)  # step 1 happened, step 2 did not finish
    [installed_at] = installs(east)

    second, second_log = start("second")
    try:
        deadline = time.monotonic() + 60
        while journal() or not world.crdb_in_sync(guid):
            assert second.poll() is None, second_log.read_text()[-3000:]
            assert time.monotonic() < deadline, second_log.read_text()[-3000:]
            time.sleep(0.05)
        messages = [
            json.loads(line).get("message", "")
            for line in second_log.read_text().splitlines()
            if line.startswith("{")
        ]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    replay = next(i for i, m in enumerate(messages) if "pending follow-up(s) from the journal" in m)
    assert "1 pending follow-up(s) from the journal: east/proxy" in messages[replay]
    # Step 2 first: before the restarted agent's own reconcile pass looked at anything.
    later = [m for m in messages[:replay] if "issued" in m or "installed" in m]
    assert later == []
    assert len(installs(east)) == 1  # the restart did not install again
    restarted_posts = [t for t in posts(east, guid) if t > killed_at]
    assert restarted_posts, "the restarted agent sent no step 2"
    [outage] = outages_of(world, guid)
    assert outage.start == pytest.approx(installed_at, abs=0.5)
    assert outage.end is not None and outage.end > killed_at
