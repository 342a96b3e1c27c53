"""The simulated cluster's OCSP model and per-database certificate endpoints, strictly as the
vendor pages and the OpenAPI document describe them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from vault_bridge_lab.simulator import SimulatedCluster

from tests.conftest import OfflineCA, make_ca
from vault_bridge.adapters.tls_probe import served_certificate
from vault_bridge.models.certificates import CertificateInfo

ADMIN = ("admin@example.com", "admin-password")
RESPONDER = "http://ocsp.example.com/ocsp"


@pytest.fixture(scope="module")
def ca() -> OfflineCA:
    return make_ca("Sim Test CA")


def _leaf(ca: OfflineCA, *, aia: str | None = None, days: int = 30) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC) - timedelta(minutes=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db.example.com")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    )
    if aia:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(aia)
                    )
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert + ca.pem, key_pem


class _Responder:
    """An in-process OCSP responder: answers ``status`` for any certificate."""

    def __init__(self, ca: OfflineCA) -> None:
        self.ca = ca
        self.status = ocsp.OCSPCertStatus.GOOD
        self.asked: list[str] = []

    def __call__(self, url: str, body: bytes) -> bytes:
        self.asked.append(url)
        request = ocsp.load_der_ocsp_request(body)
        now = datetime.now(UTC)
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash,
            issuer_key_hash=request.issuer_key_hash,
            serial_number=request.serial_number,
            algorithm=request.hash_algorithm,
            cert_status=self.status,
            this_update=now,
            next_update=now + timedelta(hours=1),
            revocation_time=now if self.status == ocsp.OCSPCertStatus.REVOKED else None,
            revocation_reason=None,
        )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, self.ca.cert)
        return builder.sign(self.ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.fixture
def responder(ca: OfflineCA) -> _Responder:
    return _Responder(ca)


@pytest.fixture
def sim(responder: _Responder) -> Iterator[SimulatedCluster]:
    with SimulatedCluster("east", software_version="8.2.0-25", ocsp_fetch=responder) as cluster:
        yield cluster


def _call(
    sim: SimulatedCluster, tmp: Path, method: str, path: str, body: Any = None
) -> requests.Response:
    ca_file = tmp / "api.pem"
    ca_file.write_text(sim.api_ca_pem(), encoding="utf-8")
    return requests.request(
        method, f"{sim.api_url}{path}", json=body, auth=ADMIN, verify=str(ca_file), timeout=10
    )


def _install_proxy(sim: SimulatedCluster, tmp: Path, cert: str, key: str) -> None:
    item = {"name": "proxy", "certificate": cert, "key": key}
    assert _call(sim, tmp, "PUT", "/v1/cluster/certificates", {"certificates": [item]}).ok


# ------------------------------------------------------------------------------- OCSP


def test_ocsp_needs_a_responder_in_the_proxy_certificate(
    sim: SimulatedCluster, tmp_path: Path, ca: OfflineCA
) -> None:
    on = {"ocsp_functionality": True}
    refused = _call(sim, tmp_path, "PUT", "/v1/ocsp", on)
    assert refused.status_code == 400 and refused.json()["error_code"] == "no_responder_url"
    assert _call(sim, tmp_path, "POST", "/v1/ocsp/test").status_code == 500
    _install_proxy(sim, tmp_path, *_leaf(ca, aia=RESPONDER))
    config = _call(sim, tmp_path, "PUT", "/v1/ocsp", on).json()
    assert config["ocsp_functionality"] is True and config["responder_url"] == RESPONDER


@pytest.mark.parametrize(
    "body",
    [
        {"responder_url": "http://elsewhere"},  # read-only
        {"query_frequency": 59},
        {"response_timeout": 61},
        {"recovery_max_tries": True},
        {"ocsp_functionality": "on"},
        {"color": "red"},  # additionalProperties: false
    ],
)
def test_put_ocsp_refuses_what_the_schema_refuses(
    sim: SimulatedCluster, tmp_path: Path, body: dict[str, Any]
) -> None:
    answer = _call(sim, tmp_path, "PUT", "/v1/ocsp", body)
    assert answer.status_code == 400 and answer.json()["error_code"] == "invalid_schema"


def test_ocsp_status_cached_by_test_and_dropped_by_a_new_proxy(
    sim: SimulatedCluster, tmp_path: Path, ca: OfflineCA, responder: _Responder
) -> None:
    _install_proxy(sim, tmp_path, *_leaf(ca, aia=RESPONDER))
    assert _call(sim, tmp_path, "PUT", "/v1/ocsp", {"ocsp_functionality": True}).ok
    assert _call(sim, tmp_path, "GET", "/v1/ocsp/status").json()["cert_status"] == "UNKNOWN"
    tested = _call(sim, tmp_path, "POST", "/v1/ocsp/test").json()
    assert tested["cert_status"] == "GOOD" and responder.asked == [RESPONDER]
    assert _call(sim, tmp_path, "GET", "/v1/ocsp/status").json()["cert_status"] == "GOOD"
    responder.status = ocsp.OCSPCertStatus.REVOKED
    assert _call(sim, tmp_path, "POST", "/v1/ocsp/test").json()["cert_status"] == "REVOKED"
    _install_proxy(sim, tmp_path, *_leaf(ca, aia=RESPONDER))  # not asked yet: UNKNOWN
    assert _call(sim, tmp_path, "GET", "/v1/ocsp/status").json()["cert_status"] == "UNKNOWN"


# --------------------------------------------------------------- per-database certificates


def test_database_certificate_dry_run_set_list_delete(
    sim: SimulatedCluster, tmp_path: Path, ca: OfflineCA
) -> None:
    uid = sim.add_bdb("orders")
    endpoint = sim.open_bdb_endpoint(uid)
    proxy = CertificateInfo.from_pem(sim.installed_pem("proxy")).fingerprint
    assert served_certificate(endpoint).fingerprint == proxy  # the cluster's until it has one
    path = f"/v1/bdbs/{uid}/certificates"
    assert _call(sim, tmp_path, "GET", path).status_code == 404
    cert, key = _leaf(ca)
    body = {"cert": cert, "private_key": key}
    dry = _call(sim, tmp_path, "POST", path + "?dry_run=true", body)
    assert dry.status_code == 200 and "private_key" not in dry.json()  # writeOnly
    assert _call(sim, tmp_path, "GET", path).status_code == 404  # dry_run changed nothing
    assert _call(sim, tmp_path, "POST", path, body).status_code == 200
    got = _call(sim, tmp_path, "GET", path).json()
    assert got["bdb_uid"] == str(uid) and got["cert"] == cert
    assert served_certificate(endpoint).fingerprint == CertificateInfo.from_pem(cert).fingerprint
    soon = (datetime.now(UTC) + timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    listed = _call(sim, tmp_path, "GET", f"/v1/bdbs/certificates?expires_before={soon}").json()
    assert [item["bdb_uid"] for item in listed] == [str(uid)]
    past = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _call(sim, tmp_path, "GET", f"/v1/bdbs/certificates?expires_before={past}").json() == []
    assert _call(sim, tmp_path, "DELETE", path).status_code == 200
    assert _call(sim, tmp_path, "GET", path).status_code == 404
    assert served_certificate(endpoint).fingerprint == proxy


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"cert": "x"}, 400),  # private_key is required
        ({"cert": "x", "private_key": "y", "name": "proxy"}, 400),  # no other keys
        (None, 400),
    ],
)
def test_database_certificate_refuses_bad_bodies(
    sim: SimulatedCluster, tmp_path: Path, body: Any, status: int
) -> None:
    uid = sim.add_bdb("orders")
    answer = _call(sim, tmp_path, "POST", f"/v1/bdbs/{uid}/certificates", body)
    assert answer.status_code == status


def test_database_certificate_checks(sim: SimulatedCluster, tmp_path: Path, ca: OfflineCA) -> None:
    uid = sim.add_bdb("orders")
    path = f"/v1/bdbs/{uid}/certificates"
    cert, _ = _leaf(ca)
    _, other_key = _leaf(ca)
    mismatch = _call(sim, tmp_path, "POST", path, {"cert": cert, "private_key": other_key})
    assert mismatch.status_code == 400 and mismatch.json()["error_code"] == "key_values_mismatch"
    assert _call(sim, tmp_path, "POST", "/v1/bdbs/99/certificates", {}).status_code == 404
    assert _call(sim, tmp_path, "GET", "/v1/bdbs/certificates?page=0").status_code == 400


def test_database_certificate_endpoints_absent_before_8_2(tmp_path: Path) -> None:
    with SimulatedCluster("old", software_version="7.22.2-14") as old:
        uid = old.add_bdb("orders")
        assert _call(old, tmp_path, "GET", "/v1/bdbs/certificates").status_code == 404
        assert _call(old, tmp_path, "GET", f"/v1/bdbs/{uid}/certificates").status_code == 404
