"""Databases with a proxy certificate of their own: issued from OpenBao, validated with
dry_run, installed, probed on the database's endpoint and carried to its Replica Of destination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from vault_bridge_lab.lab import to_toml
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import DatabaseWorld, SimulatedCluster

from tests.integration.database_helpers import database_doc
from vault_bridge.adapters.tls_probe import served_certificate
from vault_bridge.cli.main import cli
from vault_bridge.config.loading import parse_config
from vault_bridge.models.certificates import CertificateInfo
from vault_bridge.rotation.app import build

pytestmark = pytest.mark.usefixtures("lab_env")


def _fp(pem: str) -> str:
    return CertificateInfo.from_pem(pem).fingerprint


def test_database_certificate_rotated_probed_and_carried_to_its_replica(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    pair: tuple[SimulatedCluster, SimulatedCluster],
    tmp_path: Path,
) -> None:
    east, west = pair
    orders = east.add_bdb("orders")
    replica = west.add_bdb("orders-replica", replica_of=[(east, orders)])
    endpoint = east.open_bdb_endpoint(orders)
    settings = parse_config(database_doc(openbao, pki, east, west, tmp_path, endpoint))
    with build(settings, sleep=lambda s: None) as app:
        before = {s.name: s.state for s in app.rotator.status().statuses if s.cluster == "east"}
        assert before == {"proxy": "foreign", "bdb:orders": "missing"}
        result = app.rotator.run_once()
        assert result.ok, result.summary()
        assert {(o.cluster, o.name) for o in result.outcomes} >= {("east", "bdb:orders")}
        own = east.db_certs.get(orders)
        assert own is not None
        assert served_certificate(endpoint).fingerprint == _fp(own.chain_pem)  # probed
        posts = [
            r
            for r in east.requests
            if r.path == f"/v1/bdbs/{orders}/certificates" and r.method == "POST"
        ]
        assert [(r.method, r.status) for r in posts] == [("POST", 200), ("POST", 200)]  # dry_run
        entry = west.bdb(replica)["replica_sources"][0]
        assert _fp(entry["server_cert"]) == _fp(own.chain_pem)  # carried to the destination
        statuses = {s.name: s for s in app.rotator.status().statuses if s.cluster == "east"}
        assert statuses["bdb:orders"].state == "ok"
        assert app.rotator.run_once().outcomes == []  # nothing due: nothing issued
    # 500 hours later the database certificate is due again: a second rotation, carried too.
    later = datetime.now(UTC) + timedelta(hours=500)
    with build(settings, sleep=lambda s: None, clock=lambda: later) as app:
        result = app.rotator.run_once()
        assert result.ok, result.summary()
        renewed = east.db_certs.get(orders)
        assert renewed is not None and _fp(renewed.chain_pem) != _fp(own.chain_pem)
        entry = west.bdb(replica)["replica_sources"][0]
        assert _fp(entry["server_cert"]) == _fp(renewed.chain_pem)
        assert served_certificate(endpoint).fingerprint == _fp(renewed.chain_pem)
    assert not [o for o in east.outages() if o.end is None]  # the replica link is healthy


def test_dry_run_refusal_changes_nothing(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    pair: tuple[SimulatedCluster, SimulatedCluster],
    tmp_path: Path,
) -> None:
    east, west = pair
    orders = east.add_bdb("orders")
    endpoint = east.open_bdb_endpoint(orders)
    # RSA-only data ciphers: the EC certificate is refused, already by the dry run.
    east.set_access(data_cipher_list="ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256")
    settings = parse_config(database_doc(openbao, pki, east, west, tmp_path, endpoint))
    with build(settings, sleep=lambda s: None) as app:
        result = app.rotator.run_once(only={("east", "bdb:orders")})
        failed = [o for o in result.outcomes if o.name == "bdb:orders"]
        assert failed and failed[0].result == "failed" and "ECDSA" in (failed[0].error or "")
    posts = [
        r
        for r in east.requests
        if r.path == f"/v1/bdbs/{orders}/certificates" and r.method == "POST"
    ]
    assert [(r.method, r.status) for r in posts] == [("POST", 400)]  # only the dry run
    assert east.db_certs.get(orders) is None


def test_an_older_cluster_says_it_needs_a_newer_redis_enterprise(
    openbao: OpenBaoServer, pki: PkiSetup, tmp_path: Path
) -> None:
    world = DatabaseWorld()
    with (
        SimulatedCluster("east", software_version="7.22.2-14", world=world) as east,
        SimulatedCluster("west", software_version="7.22.2-14", world=world) as west,
    ):
        east.add_bdb("orders")
        settings = parse_config(database_doc(openbao, pki, east, west, tmp_path, "127.0.0.1:1"))
        with build(settings, sleep=lambda s: None) as app:
            result = app.rotator.run_once(only=set())
    failed = [o for o in result.outcomes if o.name == "bdb:orders"]
    assert failed and "need a newer Redis Enterprise" in (failed[0].error or "")
    assert not result.cluster_errors  # the cluster's own certificates are not held up


def test_an_active_active_instance_gets_its_certificate_through_the_crdb(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    pair: tuple[SimulatedCluster, SimulatedCluster],
    tmp_path: Path,
) -> None:
    east, west = pair
    guid = east.add_crdb("orders", participants=[east, west])
    uid = next(b["uid"] for b in east.world.bdbs_json("east") if b["name"] == "orders")
    endpoint = east.open_bdb_endpoint(uid)
    settings = parse_config(database_doc(openbao, pki, east, west, tmp_path, endpoint))
    with build(settings, sleep=lambda s: None) as app:
        result = app.rotator.run_once(only={("east", "bdb:orders")})
        assert result.ok, result.summary()
    own = east.db_certs.get(uid)
    assert own is not None
    assert served_certificate(endpoint).fingerprint == _fp(own.chain_pem)  # probed
    posts = [r for r in east.requests if r.method == "POST"]
    # the dry run on the database's endpoint, then the CRDB's per-instance db_config
    assert [(r.path, r.status) for r in posts] == [
        (f"/v1/bdbs/{uid}/certificates", 200),
        (f"/v1/crdbs/{guid}/updates", 200),
    ]
    assert [t.force for t in east.world._tasks.values()] == [True]  # a force update
    assert "PRIVATE KEY" not in str(east.world.bdb_json("east", uid))  # never echoed
    assert "PRIVATE KEY" not in str(east.world.crdb_json("east", guid))
    assert (
        west.db_certs.get(
            next(b["uid"] for b in west.world.bdbs_json("west") if b["name"] == "orders")
        )
        is None
    )  # only this instance


def test_issue_command_renews_a_database_certificate_now(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    pair: tuple[SimulatedCluster, SimulatedCluster],
    tmp_path: Path,
) -> None:
    east, west = pair
    orders = east.add_bdb("orders")
    endpoint = east.open_bdb_endpoint(orders)
    config = tmp_path / "config.toml"
    config.write_text(
        to_toml(database_doc(openbao, pki, east, west, tmp_path, endpoint)), encoding="utf-8"
    )
    first = CliRunner().invoke(cli, ["--config", str(config), "run", "--once"])
    print(first.output)
    assert first.exit_code == 0, first.output
    own = east.db_certs.get(orders)
    assert own is not None
    again = CliRunner().invoke(cli, ["--config", str(config), "issue", "bdb:orders"])
    print(again.output)
    assert again.exit_code == 0, again.output
    renewed = east.db_certs.get(orders)
    assert renewed is not None and _fp(renewed.chain_pem) != _fp(own.chain_pem)
    unknown = CliRunner().invoke(cli, ["--config", str(config), "issue", "bdb:nope"])
    assert unknown.exit_code == 2 and "bdb:nope" in unknown.output
