"""End to end: real OpenBao, the simulated cluster on loopback, the real rotation path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from vault_bridge_lab.lab import (
    PASSWORD_ENV,
    ROTATED,
    cluster_table,
    lab_config,
)
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

from tests.conftest import make_ca
from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.adapters.tls_probe import served_certificate, verify_chain
from vault_bridge.config.loading import parse_config
from vault_bridge.decisions.install import CertUpload
from vault_bridge.errors import ClusterError
from vault_bridge.models.certificates import CertificateInfo
from vault_bridge.rotation.app import App, build

BULK = "/v1/cluster/certificates"
UPDATE = "/v1/cluster/update_cert"


pytestmark = pytest.mark.usefixtures("lab_env")


def make_app(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sims: list[SimulatedCluster],
    tmp_path: Path,
    *,
    role: str = "redis",
    defaults: dict[str, Any] | None = None,
    names: tuple[str, ...] = ROTATED,
    **cluster_extra: Any,
) -> App:
    doc = lab_config(
        openbao,
        pki,
        [cluster_table(s, tmp_path, role=role, names=names, **cluster_extra) for s in sims],
        state_dir=tmp_path / "state",
        defaults={"key_type": "ec", "key_bits": 256, "ttl": "720h", **(defaults or {})},
    )
    return build(parse_config(doc), sleep=lambda s: None)


def served_serials(sim: SimulatedCluster) -> dict[str, str]:
    out = {
        name: served_certificate(sim.endpoint(name)).serial
        for name in ("api", "cm", "metrics_exporter", "proxy")
    }
    out["syncer"] = CertificateInfo.from_pem(sim.installed_pem("syncer")).serial
    return out


@pytest.mark.parametrize("version", ["7.22.2-14", "7.8.4-18"])
def test_all_five_rotated_and_second_pass_issues_nothing(
    openbao: OpenBaoServer, pki: PkiSetup, tmp_path: Path, version: str
) -> None:
    with (
        SimulatedCluster("east", software_version=version) as sim,
        make_app(openbao, pki, [sim], tmp_path) as app,
    ):
        before = app.rotator.status()
        assert {s.state for s in before.statuses} == {"foreign"}
        result = app.rotator.run_once()
        assert result.ok, result.summary()
        assert sorted(o.name for o in result.outcomes) == sorted(ROTATED)
        for name in ("api", "cm", "metrics_exporter", "proxy"):
            verify_chain(sim.endpoint(name), pki.root_pem)  # served and chains to the Vault root
        puts = [r for r in sim.requests if r.method == "PUT"]
        if version.startswith("7.22"):
            assert [(r.path, r.status) for r in puts] == [(BULK, 200)]  # one bulk request
        else:
            assert {r.path for r in puts if r.status == 200} == {UPDATE}
            assert len([r for r in puts if r.path == UPDATE]) == 5
        after = app.rotator.status()
        assert {s.state for s in after.statuses} == {"ok"}
        installs = sim.install_count
        again = app.rotator.run_once()
        assert again.ok and again.outcomes == []
        assert sim.install_count == installs


@pytest.mark.parametrize(
    ("mode", "role", "key_type", "key_bits", "algorithm"),
    [
        ("sign", "redis", "ec", 256, "EC"),
        ("sign", "redis", "rsa", 2048, "RSA"),
        ("issue", "redis-rsa", "rsa", 2048, "RSA"),
        ("issue", "redis-ec", "ec", 256, "EC"),
    ],
)
def test_modes_and_key_types(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    mode: str,
    role: str,
    key_type: str,
    key_bits: int,
    algorithm: str,
) -> None:
    from cryptography import x509

    defaults = {"mode": mode, "key_type": key_type, "key_bits": key_bits}
    with make_app(
        openbao, pki, [sim], tmp_path, role=role, defaults=defaults, names=("proxy",)
    ) as app:
        result = app.rotator.run_once()
        assert result.ok, result.summary()
    leaf = x509.load_pem_x509_certificate(sim.installed_pem("proxy").encode())
    assert type(leaf.public_key()).__name__.startswith(algorithm)
    assert (
        served_certificate(sim.endpoint("proxy")).fingerprint
        == CertificateInfo.from_cert(leaf).fingerprint
    )


def test_chain_is_sent_leaf_first_with_intermediate(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    with make_app(openbao, pki, [sim], tmp_path, names=("cm",)) as app:
        assert app.rotator.run_once().ok
    from vault_bridge.models.certificates import split_pem_chain

    chain = split_pem_chain(sim.installed_pem("cm"))
    assert len(chain) == 2
    assert (
        CertificateInfo.from_pem(chain[1]).subject
        == CertificateInfo.from_pem(pki.intermediate_pem or "").subject
    )


def test_409_then_success(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    sim.inject_fault("PUT", BULK, 409, times=2)
    with make_app(openbao, pki, [sim], tmp_path, names=("proxy", "cm")) as app:
        result = app.rotator.run_once()
    assert result.ok, result.summary()
    assert [r.status for r in sim.requests if r.method == "PUT"] == [409, 409, 200]


def test_bulk_404_falls_back_to_update_cert(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    """A cluster that reports 7.22.2 but has no bulk endpoint (404) still gets its certificates."""
    sim.inject_fault(
        "PUT", BULK, 404, times=1, body={"error_code": "not_found", "description": "no such path"}
    )
    with make_app(openbao, pki, [sim], tmp_path, names=("proxy", "cm")) as app:
        result = app.rotator.run_once()
    assert result.ok, result.summary()
    assert [(r.path, r.status) for r in sim.requests if r.method == "PUT"] == [
        (BULK, 404),
        (UPDATE, 200),
        (UPDATE, 200),
    ]


def _old_state(sim: SimulatedCluster) -> dict[str, str]:
    return {name: sim.installed_pem(name) for name in ROTATED}


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (
            {
                "status": 400,
                "body": {"error_code": "key_values_mismatch", "description": "key does not match"},
            },
            "private key does not match",
        ),
        (
            {
                "status": 406,
                "body": {"error_code": "certificate_expired", "description": "expired"},
            },
            "expired",
        ),
        ({"status": 500, "times": 10}, "internal error on the cluster"),
        ({"status": 503, "times": 10}, "not answering or not in the cluster"),
    ],
)
def test_rejections_leave_old_certificate(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    fault: dict[str, Any],
    expected: str,
) -> None:
    old = _old_state(sim)
    served_before = served_serials(sim)
    status = fault.pop("status")
    sim.inject_fault("PUT", BULK, status, **{"times": 1, **fault})
    with make_app(openbao, pki, [sim], tmp_path, names=("proxy",)) as app:
        result = app.rotator.run_once()
    assert not result.ok
    assert expected in (result.failed[0].error or "")
    assert result.failed[0].name == "proxy"
    assert _old_state(sim) == old
    assert served_serials(sim) == served_before


def test_real_cluster_rejections_through_the_client(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    """The simulator's own validation (not injected faults): mismatch, unknown name, expired."""
    from datetime import timedelta

    ca = make_ca("Other CA")
    cert, key = ca.leaf("x.example.com")
    _, other_key = ca.leaf("y.example.com")
    expired_cert, expired_key = ca.leaf(
        lifetime=timedelta(seconds=1),
        not_before=__import__("datetime").datetime(2020, 1, 1, tzinfo=__import__("datetime").UTC),
    )
    old = _old_state(sim)
    with make_app(openbao, pki, [sim], tmp_path) as app:
        client = app.clusters["east"]
        cases = [
            ([CertUpload("proxy", cert, other_key)], 400, "private key does not match"),
            ([CertUpload("bogus", cert, key)], 403, "unknown certificate name"),
            ([CertUpload("proxy", expired_cert, expired_key)], 406, "expired"),
        ]
        for uploads, status, message in cases:
            with pytest.raises(ClusterError) as info:
                client.put_certificates(uploads)
            assert info.value.status == status
            assert message in str(info.value)
            with pytest.raises(ClusterError) as info:
                client.update_cert(uploads[0])
            assert info.value.status in (status, 404)
    assert _old_state(sim) == old


def test_non_admin_and_bad_password(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = _old_state(sim)
    monkeypatch.setenv("VIEWER_PASSWORD", "viewer-password")
    with make_app(
        openbao,
        pki,
        [sim],
        tmp_path,
        names=("proxy",),
        username="viewer@example.com",
        password_env="VIEWER_PASSWORD",
    ) as app:
        result = app.rotator.run_once()
        assert not result.ok
        assert "lacks the admin role" in (result.failed[0].error or "")
        assert "HTTP 403" in (result.failed[0].error or "")
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password")
    with make_app(openbao, pki, [sim], tmp_path, names=("proxy",)) as app:
        result = app.rotator.run_once()
        assert not result.ok
        assert "wrong username or password" in result.cluster_errors["east"]
    assert _old_state(sim) == old


def test_api_rotation_keeps_verified_tls(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    original_ca = sim.api_ca_pem()
    with make_app(openbao, pki, [sim], tmp_path, names=("api",)) as app:
        assert app.rotator.run_once().ok
        # The API now serves a Vault certificate; the agent keeps talking over verified TLS.
        status = app.rotator.status()
        assert [s.state for s in status.statuses] == ["ok"]
        verify = app.clusters["east"].verify
        assert isinstance(verify, str)
        assert pki.root_pem.strip() in Path(verify).read_text()
    # The old self-signed certificate alone no longer verifies the API: trust really moved.
    assert (
        served_certificate(sim.endpoint("api")).fingerprint
        != CertificateInfo.from_pem(original_ca).fingerprint
    )
    ca_file = tmp_path / "old.pem"
    ca_file.write_text(original_ca)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{sim.api_url}/v1/nodes", verify=str(ca_file), timeout=5)


def test_pinned_fingerprint_then_vault_chain(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    """Trust by a pinned fingerprint of the first API certificate, then by Vault's chain."""
    fp = CertificateInfo.from_pem(sim.api_ca_pem()).fingerprint
    doc = lab_config(
        openbao,
        pki,
        [cluster_table(sim, tmp_path, role="redis", names=("api", "cm"))],
        state_dir=tmp_path / "s",
        defaults={"key_type": "ec", "key_bits": 256},
    )
    del doc["clusters"][0]["ca_file"]
    doc["clusters"][0]["ca_fingerprint"] = fp
    with build(parse_config(doc), sleep=lambda s: None) as app:
        assert app.rotator.run_once().ok
        assert {s.state for s in app.rotator.status().statuses} == {"ok"}
    doc["clusters"][0]["ca_fingerprint"] = "00" * 32
    with build(parse_config(doc), sleep=lambda s: None) as app:
        # the API cert is Vault's now: the chain verifies even though the pin is wrong
        assert app.rotator.status().cluster_errors == {}


def test_wrong_pin_is_refused(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    doc = lab_config(
        openbao,
        pki,
        [cluster_table(sim, tmp_path, role="redis", names=("cm",))],
        state_dir=tmp_path / "s",
    )
    del doc["clusters"][0]["ca_file"]
    doc["clusters"][0]["ca_fingerprint"] = "ab" * 32
    with build(parse_config(doc), sleep=lambda s: None) as app:
        errors = app.rotator.status().cluster_errors
    assert "TLS verification of the REST API failed" in errors["east"]


def test_pinned_ca_file_wins_over_requests_ca_bundle(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REQUESTS_CA_BUNDLE must neither replace nor widen the trust configured for a cluster."""
    unrelated = tmp_path / "unrelated.pem"
    unrelated.write_text(make_ca("Unrelated").pem)
    sim_ca = tmp_path / "sim.pem"
    sim_ca.write_text(sim.api_ca_pem())
    # 1. env points at the system bundle (as on this machine): the pinned ca_file still works
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    with make_app(openbao, pki, [sim], tmp_path, names=("cm",)) as app:
        assert app.clusters["east"].nodes()
    # 2. env points at the cluster's CA but ca_file at an unrelated CA: must fail
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sim_ca))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(sim_ca))
    with make_app(openbao, pki, [sim], tmp_path, names=("cm",)) as app:
        settings = app.settings.clusters[0]
    from dataclasses import replace

    with (
        ClusterClient(replace(settings, ca_file=str(unrelated)), sleep=lambda s: None) as client,
        pytest.raises(ClusterError, match="TLS verification"),
    ):
        client.nodes()


def test_one_failure_does_not_stop_the_others(
    openbao: OpenBaoServer, pki: PkiSetup, tmp_path: Path
) -> None:
    with SimulatedCluster("east") as east, SimulatedCluster("west") as west:
        west.inject_fault(
            "PUT", BULK, 400, times=5, body={"error_code": "invalid", "description": "nope"}
        )
        with make_app(openbao, pki, [east, west], tmp_path, names=("cm", "proxy")) as app:
            result = app.rotator.run_once()
        assert {(o.cluster, o.result) for o in result.outcomes} == {
            ("east", "installed"),
            ("west", "failed"),
        }
        assert "2 of 4 certificates failed" in result.summary()
