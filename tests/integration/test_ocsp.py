"""OCSP stapling of the proxy certificate against a real OpenBao responder: Vault named as the
responder (vault-setup), stapling turned on after the proxy change, the status reported; a
proxy certificate naming no responder is refused while stapling is on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vault_bridge_lab.lab import ROTATED, cluster_table, lab_config
from vault_bridge_lab.openbao import DEFAULT_ROLE, OpenBaoServer, PkiSetup, setup_pki
from vault_bridge_lab.simulator import SimulatedCluster

from vault_bridge.agent.health import Metrics, Snapshot
from vault_bridge.cli.render import status_table
from vault_bridge.config.loading import parse_config
from vault_bridge.decisions.ocsp import ocsp_urls, vault_ocsp_url
from vault_bridge.models.certificates import CertificateInfo
from vault_bridge.rotation.app import build, vault_client
from vault_bridge.rotation.vault_setup import setup_roles

pytestmark = pytest.mark.usefixtures("lab_env")


@pytest.fixture
def own_pki(openbao: OpenBaoServer) -> PkiSetup:
    suffix = uuid.uuid4().hex[:8]
    return setup_pki(
        openbao.client(),
        mount=f"pki-root-ocsp-{suffix}",
        int_mount=f"pki-ocsp-{suffix}",
        roles={"redis": DEFAULT_ROLE},
    )


@pytest.fixture
def sim(openbao: OpenBaoServer) -> Iterator[SimulatedCluster]:
    # The simulated cluster asks OpenBao's OCSP endpoint itself, over TLS.
    with SimulatedCluster("east", ocsp_ca_file=openbao.ca_cert) as cluster:
        yield cluster


def _doc(openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp: Path) -> dict[str, Any]:
    table = cluster_table(sim, tmp, role="redis", names=ROTATED, ocsp_responder="vault")
    return lab_config(
        openbao,
        pki,
        [table],
        state_dir=tmp / "state",
        defaults={"key_type": "ec", "key_bits": 256},
    )


def test_ocsp_responder_vault_status_reported_after_a_proxy_change(
    openbao: OpenBaoServer, own_pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    settings = parse_config(_doc(openbao, own_pki, sim, tmp_path))
    mount = own_pki.issuing_mount
    wanted = vault_ocsp_url(openbao.address, mount)
    with vault_client(settings) as vault:
        vault.ensure_token()
        report = setup_roles(vault, settings, apply=True)
    assert f"{mount}/config/urls: updated: ocsp_servers += {wanted!r}" in report.lines
    assert not sim.ocsp.config["ocsp_functionality"]
    with build(settings, sleep=lambda s: None) as app:
        before = len(sim.requests)
        result = app.rotator.run_once()
        assert result.ok, result.summary()
        # One read of the OCSP settings serves the plan, the check before the proxy install
        # and the report after it; turning stapling on is the one write.
        ocsp_calls = [(r.method, r.path) for r in sim.requests[before:] if "/ocsp" in r.path]
        assert ocsp_calls.count(("GET", "/v1/ocsp")) == 1, ocsp_calls
        assert ocsp_calls.count(("PUT", "/v1/ocsp")) == 1, ocsp_calls
        assert ocsp_urls(sim.installed_pem("proxy")) == [wanted]
        # Stapling turned on, Vault asked at once: the new proxy certificate is GOOD.
        assert sim.ocsp.config["ocsp_functionality"] is True
        assert sim.ocsp.queries == 1
        assert app.rotator.ocsp["east"].cert_status == "GOOD"
        assert app.rotator.ocsp["east"].responder_url == wanted
        statuses = {s.name: s for s in app.rotator.status().statuses}
        assert statuses["proxy"].ocsp == "GOOD" and statuses["cm"].ocsp is None
        assert statuses["proxy"].as_json()["ocsp"] == "GOOD"
        table = status_table(list(statuses.values()))
        assert table.splitlines()[0].endswith("OCSP")
        metrics = Metrics()
        metrics.publish(Snapshot(ocsp={c: s.cert_status for c, s in app.rotator.ocsp.items()}))
        text = metrics.exposition().decode()
        assert 'vault_bridge_ocsp_status{cluster="east",status="GOOD"} 1.0' in text
        assert 'vault_bridge_ocsp_status{cluster="east",status="REVOKED"} 0.0' in text
        # Revoked in Vault: the cluster's next query sees it (what clients will be stapled).
        serial = CertificateInfo.from_pem(sim.installed_pem("proxy")).serial
        app.vault.revoke(mount, serial=serial)
        assert app.clusters["east"].ocsp_test().cert_status == "REVOKED"
        statuses = {s.name: s for s in app.rotator.status().statuses}
        assert statuses["proxy"].ocsp == "REVOKED"


def test_a_proxy_naming_no_responder_is_refused_while_stapling_is_on(
    openbao: OpenBaoServer, own_pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    settings = parse_config(_doc(openbao, own_pki, sim, tmp_path))
    mount = own_pki.issuing_mount
    with vault_client(settings) as vault:
        vault.ensure_token()
        setup_roles(vault, settings, apply=True)
    with build(settings, sleep=lambda s: None) as app:
        assert app.rotator.run_once().ok
        assert sim.ocsp.config["ocsp_functionality"] is True
        installed = sim.installed_pem("proxy")
        # The mount stops naming its OCSP endpoint: a new proxy would be stapled UNKNOWN.
        openbao.client().write_data(f"{mount}/config/urls", data={"ocsp_servers": []})
        result = app.rotator.run_once(force=[("east", "proxy")])
        assert [(o.name, o.result) for o in result.outcomes] == [("proxy", "failed")]
        assert "names no OCSP responder" in (result.outcomes[0].error or "")
        assert sim.installed_pem("proxy") == installed  # the good one stays
