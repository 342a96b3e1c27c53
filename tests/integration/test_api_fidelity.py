"""The documented API, end to end: real OpenBao, the strict simulator, the real rotation path and
the CLI. Each test names the defect of issue 9 it covers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from vault_bridge_lab.lab import cluster_table, lab_config, to_toml
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import DatabaseWorld, SimulatedCluster

from vault_bridge.cli.main import cli
from vault_bridge.config.loading import parse_config
from vault_bridge.models.certificates import CertificateInfo, split_pem_chain
from vault_bridge.rotation.app import App, build
from vault_bridge.rotation.followups import FollowUps, Limits

pytestmark = [pytest.mark.usefixtures("lab_env"), pytest.mark.timeout(120)]

BULK = "/v1/cluster/certificates"
FAST = Limits(retry_delay=0.05, in_flight_wait=5.0, in_sync_wait=5.0, task_timeout=10.0)


def config_doc(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sims: list[SimulatedCluster],
    tmp_path: Path,
    *,
    names: tuple[str, ...] = ("proxy",),
    defaults: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return lab_config(
        openbao,
        pki,
        [cluster_table(s, tmp_path, role="redis", names=names, **extra) for s in sims],
        state_dir=tmp_path / "state",
        defaults={"key_type": "ec", "key_bits": 256, "ttl": "720h", **(defaults or {})},
    )


def make_app(doc: dict[str, Any]) -> App:
    settings = parse_config(doc)
    followups = FollowUps(settings, None, limits=FAST)
    return build(settings, sleep=lambda s: None, followups=followups)


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    print(result.output)  # the suite-wide secret scan sees every line
    return result


def write(doc: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / "config.toml"
    path.write_text(to_toml(doc))
    return str(path)


def puts(sim: SimulatedCluster) -> list[tuple[str, int]]:
    return [(r.path, r.status) for r in sim.requests if r.method == "PUT"]


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


# -- defect 3: a slow install is sent once ---------------------------------------------------


def test_defect3_slow_install_one_request_exit_0(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    """The install takes 2.5 s, four times the ordinary read timeout: one request, exit 0."""
    east.install_delay = 2.5
    doc = config_doc(openbao, pki, [east], tmp_path, timeout=0.6, install_timeout=20)
    ran = invoke("--config", write(doc, tmp_path), "run", "--once")
    assert ran.exit_code == 0, ran.output
    assert puts(east) == [(BULK, 200)]


def test_defect3_timed_out_install_is_read_back_not_resent(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    """The install outlives even its own timeout but goes in: the read-back finds it."""
    east.install_delay = 1.5
    doc = config_doc(openbao, pki, [east], tmp_path, timeout=5, install_timeout=0.5)
    with make_app(doc) as app:
        # the read-back waits the backoff first, while the install is still applying
        app.clusters["east"]._backoff = 1.5
        app.rotator._sleep = time.sleep
        result = app.rotator.run_once()
    assert result.ok, result.summary()
    time.sleep(2.0)  # a second request, had one been sent, would have been applied by now
    assert east.install_count == 1
    assert [p for p in puts(east) if p[0] == BULK] == [(BULK, 200)]


# -- defect 4: a final 409 with the certificate in place is "partially applied" ------------


def test_defect4_409_partial_is_reported_and_follow_ups_run(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    west: SimulatedCluster,
    tmp_path: Path,
) -> None:
    guid = east.add_crdb("cache", participants=[east, west])
    east.partial_installs(1)
    doc = config_doc(openbao, pki, [east, west], tmp_path)
    doc["clusters"] = doc["clusters"][:1]  # only east's proxy changes
    ran = invoke("--config", write(doc, tmp_path), "run", "--once")
    assert ran.exit_code == 0, ran.output
    assert "partially applied" in ran.output
    assert "installed (partially applied) proxy on east" in ran.output
    assert "0 of 1" not in ran.output and "failed" not in ran.output
    assert puts(east) == [(BULK, 409)]  # never sent again: the read-back found it
    assert east.world.update_requests == 1  # the CRDB follow-up ran
    assert east.world.crdb_in_sync(guid)


def test_409_then_nothing_in_place_is_sent_again(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    """A 409 that applied nothing: the read-back shows the old certificate, so it is resent."""
    east.inject_fault("PUT", BULK, 409, times=1)
    with make_app(config_doc(openbao, pki, [east], tmp_path)) as app:
        result = app.rotator.run_once()
    assert result.ok, result.summary()
    assert puts(east) == [(BULK, 409), (BULK, 200)]


# -- defect 5: CRDB updates carry X-Task-ID; a lost answer is not a second update ----------


def test_defect5_post_timeout_is_one_force_update(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    west: SimulatedCluster,
    tmp_path: Path,
) -> None:
    guid = east.add_crdb("cache", participants=[east, west])
    east.inject_fault("POST", f"/v1/crdbs/{guid}/updates", 0, delay=2.0)
    doc = config_doc(openbao, pki, [east, west], tmp_path, timeout=0.7)
    doc["clusters"] = doc["clusters"][:1]
    with make_app(doc) as app:
        for client in app.clusters.values():
            client._sleep = time.sleep
        result = app.rotator.run_once()
    assert result.ok, result.summary()
    time.sleep(2.5)  # the held first request has been handled by now
    tasks = east.world.tasks(guid)
    assert len(tasks) == 1, tasks  # one force update, however many requests carried it
    assert east.world.crdb_in_sync(guid)


# -- defect 6: the admin check never probes the install endpoint ---------------------------


@pytest.mark.parametrize("version", ["7.22.2-14", "7.8.4-18"])
@pytest.mark.parametrize("user", ["admin@example.com", "viewer@example.com"])
def test_defect6_validate_connect_reads_the_role(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    version: str,
    user: str,
) -> None:
    monkeypatch.setenv("VIEWER_PASSWORD", "viewer-password")
    with SimulatedCluster("east", software_version=version) as sim:
        extra: dict[str, Any] = {}
        if user.startswith("viewer"):
            extra = {"username": user, "password_env": "VIEWER_PASSWORD"}
        doc = config_doc(openbao, pki, [sim], tmp_path, **extra)
        ran = invoke("--config", write(doc, tmp_path), "validate", "--connect")
        paths = {(r.method, r.path) for r in sim.requests}
    assert ("PUT", "/v1/cluster/update_cert") not in paths
    if user.startswith("admin"):
        assert ran.exit_code == 0, ran.output
    else:
        assert ran.exit_code == 1
        assert "may not install certificates (needs the admin role)" in ran.output
    expected = "/v1/users/role" if version.startswith("7.22") else "/v1/users"
    assert ("GET", expected) in paths


# -- defect 7: internode certificates keep their root ---------------------------------------


def test_defect7_internode_chain_holds_the_root(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    doc = config_doc(
        openbao,
        pki,
        [east],
        tmp_path,
        names=("ccs_internode_encryption",),
        defaults={"key_type": "rsa", "key_bits": 2048},
    )
    with make_app(doc) as app:
        result = app.rotator.run_once()
    assert result.ok, result.summary()
    chain = split_pem_chain(east.installed_pem("ccs_internode_encryption"))
    assert chain[-1].strip() == pki.root_pem.strip()


# -- defects 10 and 11: malformed answers change nothing ------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"api_cert": "-----BEGIN CERTIFICATE-----\\nMIIB',  # truncated
        {"status": "ok"},
        b"\x00\xff not json",
        {"proxy_cert": 42, "api_cert": [], "cm_cert": None, "syncer_cert": {}},
    ],
)
def test_defect10_11_malformed_certificate_list_changes_nothing(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    body: Any,
) -> None:
    names = ("cm", "api", "proxy", "syncer", "metrics_exporter")
    before = {n: east.installed_pem(n) for n in names}
    doc = config_doc(openbao, pki, [east], tmp_path, names=names)
    config = write(doc, tmp_path)
    east.inject_fault("GET", BULK, 200, times=50, body=body)
    ran = invoke("--config", config, "run", "--once")
    assert ran.exit_code == 1
    assert "Traceback" not in ran.output
    errors = [line for line in ran.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "malformed answer" in errors[0]
    assert puts(east) == []
    assert {n: east.installed_pem(n) for n in names} == before
    state = Path(doc["agent"]["state_dir"]) / "state.json"
    if state.exists():
        assert json.loads(state.read_text()).get("superseded", []) == []
    east._faults.clear()
    again = invoke("--config", config, "run", "--once")  # recovery on the next run
    assert again.exit_code == 0, again.output


def test_defect11_read_back_malformed_after_install_revokes_nothing(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    """The install goes in; every read-back after it is malformed: nothing is revoked, and
    the next run finds the certificates ours and valid."""
    names = ("cm", "proxy", "syncer")
    doc = config_doc(openbao, pki, [east], tmp_path, names=names)
    config = write(doc, tmp_path)
    original = east._rest.put_certificates

    def install_then_break(req: Any) -> Any:
        answer = original(req)
        east.inject_fault("GET", BULK, 200, times=50, body={"status": "ok"})
        return answer

    east._rest.router._routes = [
        r
        if not (r.method == "PUT" and r.template == BULK)
        else type(r)(
            r.method, r.template, install_then_break, r.permission, r.min_version, r.pattern
        )
        for r in east._rest.router._routes
    ]
    ran = invoke("--config", config, "run", "--once")
    assert ran.exit_code == 1 and "malformed answer" in ran.output
    assert "Traceback" not in ran.output
    installed = {n: east.installed_pem(n) for n in names}
    east._faults.clear()
    again = invoke("--config", config, "run", "--once")
    assert again.exit_code == 0, again.output
    assert {n: east.installed_pem(n) for n in names} == installed  # kept, not replaced
    status = json.loads(invoke("--config", config, "status", "--json").stdout)
    assert {row["state"] for row in status} == {"ok"}
    assert "revoked" not in again.output


# -- defect 13: --config naming a directory ---------------------------------------------------


def test_defect13_config_directory_is_one_line_exit_2(tmp_path: Path) -> None:
    ran = invoke("--config", str(tmp_path), "validate")
    assert ran.exit_code == 2
    lines = [line for line in ran.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot read configuration")
    assert "Usage:" not in ran.output


# -- defect 14: each failure against the cluster it belongs to ------------------------------


def test_defect14_unreachable_cluster_owns_its_failure(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    west: SimulatedCluster,
    tmp_path: Path,
) -> None:
    guid = east.add_crdb("cache", participants=[east])
    doc = config_doc(openbao, pki, [east, west], tmp_path, names=("proxy", "syncer"))
    west.stop()  # unreachable from now on
    ran = invoke("--config", write(doc, tmp_path), "run", "--once")
    assert ran.exit_code == 1
    assert "failed proxy on east" not in ran.output
    assert "failed syncer on east" not in ran.output
    assert "installed proxy on east" in ran.output
    assert "installed syncer on east" in ran.output
    assert "failed cluster west" in ran.output
    assert east.world.crdb_in_sync(guid)


def test_defect11_a_revoked_certificate_of_ours_is_not_ok(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    doc = config_doc(openbao, pki, [east], tmp_path)
    config = write(doc, tmp_path)
    assert invoke("--config", config, "run", "--once").exit_code == 0
    serial = CertificateInfo.from_pem(east.installed_pem("proxy")).serial
    openbao.client().write_data(f"{pki.issuing_mount}/revoke", data={"serial_number": serial})
    status = json.loads(invoke("--config", config, "status", "--json").stdout)
    assert [(row["name"], row["state"]) for row in status] == [("proxy", "revoked")]
    ran = invoke("--config", config, "run", "--once")
    assert ran.exit_code == 0, ran.output
    assert CertificateInfo.from_pem(east.installed_pem("proxy")).serial != serial
    status = json.loads(invoke("--config", config, "status", "--json").stdout)
    assert [row["state"] for row in status] == ["ok"]


# -- defect 9: an Active-Active database as a Replica Of source -----------------------------


def test_defect9_crdb_source_trusts_the_new_syncer_through_the_crdb(
    openbao: OpenBaoServer, pki: PkiSetup, tmp_path: Path
) -> None:
    world = DatabaseWorld(queued_time=0.005, run_time=0.3, resync_time=0.05)
    with (
        SimulatedCluster("east", world=world) as east,
        SimulatedCluster("west", world=world) as west,
    ):
        guid = east.add_crdb("cache", participants=[east, west])
        source_uid = world._crdbs[guid].db_uids["east"]
        west.add_bdb("cache-copy", replica_of=[(east, source_uid)])
        doc = config_doc(openbao, pki, [east, west], tmp_path, names=("syncer",))
        doc["clusters"][0]["certificates"] = {}  # only west's syncer changes
        with make_app(doc) as app:
            result = app.rotator.run_once()
        assert result.ok, result.summary()
        new_syncer = CertificateInfo.from_pem(west.installed_pem("syncer")).fingerprint
        trusted = {
            CertificateInfo.from_pem(c["client_cert"]).fingerprint
            for c in east.bdb(source_uid)["authentication_ssl_client_certs"]
        }
        assert new_syncer in trusted  # survived the CRDB's own force update
        assert world.rejecting() == []
        posts = [r for r in east.requests if r.method == "POST"]
        assert not [r for r in east.requests if r.method == "PUT" and r.path.startswith("/v1/bdbs")]
        assert len(posts) >= 2  # the client certificates through the CRDB (add, then remove)


# -- defect 8: the REST API away after an internode install ----------------------------------


def test_defect8_internode_install_not_yet_confirmed_is_not_a_failure(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    east.internode_outage = 5.0
    doc = config_doc(
        openbao,
        pki,
        [east],
        tmp_path,
        names=("ccs_internode_encryption",),
        defaults={"key_type": "rsa", "key_bits": 2048},
        internode_confirm_timeout=0,
    )
    config = write(doc, tmp_path)
    ran = invoke("--config", config, "run", "--once")
    assert ran.exit_code == 0, ran.output
    assert "installed (not yet confirmed) ccs_internode_encryption on east" in ran.output
    assert "failed" not in ran.output
    while east._rest_down():
        time.sleep(0.2)
    status = json.loads(invoke("--config", config, "status", "--json").stdout)
    assert [row["state"] for row in status] == ["ok"]


# -- defect 1: replica_sources sent back with writable fields only, client_key never erased -


def test_defect1_replica_update_sends_writable_fields_and_never_erases_a_key(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    west: SimulatedCluster,
    tmp_path: Path,
) -> None:
    source = east.add_bdb("orders")
    replica = west.add_bdb(
        "orders-replica", replica_of=[(east, source)], source_fields={"client_key": "KEY-PEM"}
    )
    doc = config_doc(openbao, pki, [east, west], tmp_path)
    doc["clusters"][1]["certificates"] = {}  # east's proxy changes
    with make_app(doc) as app:
        result = app.rotator.run_once()
    assert result.ok, result.summary()  # the strict simulator accepted the PUT
    [entry] = west.world._bdbs[("west", replica)].fields["replica_sources"]
    assert entry["client_key"] == "KEY-PEM"  # echoed, so kept
    assert entry["server_cert"].strip() == east.installed_pem("proxy").strip()
    assert west.world.rejecting() == []

    # a cluster that does not return client_key: the database is left alone and reported
    west.world.hide_client_key = True
    before = [r for r in west.requests if r.method == "PUT"]
    with make_app(doc) as app:
        result = app.rotator.run_once(force=[("east", "proxy")])
    [failed] = result.failed
    assert "client_key" in (failed.error or "") and "by hand" in (failed.error or "")
    assert [r for r in west.requests if r.method == "PUT"] == before  # nothing sent
    [entry] = west.world._bdbs[("west", replica)].fields["replica_sources"]
    assert entry["client_key"] == "KEY-PEM"
