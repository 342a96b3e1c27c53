"""The simulated cluster's access control: mTLS on the REST listener, certificate users,
Basic authentication turned off (8.2+), ``PUT /v1/cluster`` and ``POST /v1/users``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.x509.oid import ExtendedKeyUsageOID
from vault_bridge_lab.simulator import SimulatedCluster

from tests.conftest import OfflineCA, make_ca

ADMIN = ("admin@example.com", "admin-password")
CLIENT = (ExtendedKeyUsageOID.CLIENT_AUTH,)


@pytest.fixture
def sim() -> Iterator[SimulatedCluster]:
    with SimulatedCluster("east", software_version="8.2.0-25") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client_ca() -> OfflineCA:
    return make_ca("Client CA")


def _ca_file(sim: SimulatedCluster, tmp_path: Path) -> str:
    path = tmp_path / "api-ca.pem"
    path.write_text(sim.api_ca_pem(), encoding="utf-8")
    return str(path)


def _call(
    sim: SimulatedCluster,
    tmp_path: Path,
    method: str,
    path: str,
    body: Any = None,
    *,
    auth: tuple[str, str] | None = ADMIN,
    cert: tuple[str, str] | None = None,
) -> requests.Response:
    return requests.request(
        method,
        f"{sim.api_url}{path}",
        json=body,
        auth=auth,
        cert=cert,
        verify=_ca_file(sim, tmp_path),
        timeout=10,
    )


def _client_files(ca: OfflineCA, cn: str, tmp_path: Path) -> tuple[str, str]:
    cert_pem, key_pem = ca.leaf(cn, ekus=CLIENT)
    tag = ca.cert.subject.rfc4514_string().replace("=", "-").replace(" ", "-")
    cert, key = tmp_path / f"{tag}-{cn}.crt", tmp_path / f"{tag}-{cn}.key"
    cert.write_text(cert_pem, encoding="utf-8")
    key.write_text(key_pem, encoding="utf-8")
    key.chmod(0o600)
    return str(cert), str(key)


def _trust(sim: SimulatedCluster, tmp_path: Path, ca: OfflineCA) -> None:
    item = {"name": "mtls_trusted_ca", "certificate": ca.pem}
    assert _call(sim, tmp_path, "PUT", "/v1/cluster/certificates", {"certificates": [item]}).ok
    assert _call(sim, tmp_path, "PUT", "/v1/cluster", {"mtls_certificate_authentication": True}).ok


def test_certificate_user_logs_in_and_a_foreign_certificate_is_refused_in_the_handshake(
    sim: SimulatedCluster, tmp_path: Path, client_ca: OfflineCA
) -> None:
    _trust(sim, tmp_path, client_ca)
    user = {
        "email": "robot@example.com",
        "role": "admin",
        "auth_method": "certificate",
        "certificate_subject_line": "CN=robot.example.com",
    }
    created = _call(sim, tmp_path, "POST", "/v1/users", user)
    assert created.status_code == 200 and created.json()["auth_method"] == "certificate"
    robot = _client_files(client_ca, "robot.example.com", tmp_path)
    answer = _call(sim, tmp_path, "GET", "/v1/nodes", auth=None, cert=robot)
    assert answer.status_code == 200
    assert sim.requests[-1].user == "robot@example.com" and sim.requests[-1].client_certificate
    # A certificate of the trusted CA without a matching user: 401.
    stranger = _client_files(client_ca, "stranger.example.com", tmp_path)
    assert _call(sim, tmp_path, "GET", "/v1/nodes", auth=None, cert=stranger).status_code == 401
    # One from another CA never gets past the handshake.
    other = _client_files(make_ca("Other CA"), "robot.example.com", tmp_path)
    with pytest.raises(requests.exceptions.RequestException):
        _call(sim, tmp_path, "GET", "/v1/nodes", auth=None, cert=other)
    assert sim.wait_for_handshake_failures("api", 1) == 1
    # Basic still works (mTLS is additive) until it is turned off.
    assert _call(sim, tmp_path, "GET", "/v1/nodes").status_code == 200
    off = {"control_plane_basic_authentication": False}
    assert _call(sim, tmp_path, "PUT", "/v1/cluster", off).status_code == 200
    refused = _call(sim, tmp_path, "GET", "/v1/nodes")
    assert refused.status_code == 401 and "WWW-Authenticate" not in refused.headers
    assert (
        _call(sim, tmp_path, "GET", "/v1/cluster", auth=None, cert=robot).json()[
            "control_plane_basic_authentication"
        ]
        is False
    )


def test_subject_validation_san_cn(
    sim: SimulatedCluster, tmp_path: Path, client_ca: OfflineCA
) -> None:
    _trust(sim, tmp_path, client_ca)
    sim.add_certificate_user("a@example.com", "CN=a.example.com")
    sim.add_certificate_user("b@example.com", "CN=b.example.com")
    sim.set_access(
        mtls_client_cert_subject_validation_type="san_cn",
        mtls_authorized_subjects=[{"CN": "a.example.com"}],
    )
    a = _client_files(client_ca, "a.example.com", tmp_path)
    b = _client_files(client_ca, "b.example.com", tmp_path)
    assert _call(sim, tmp_path, "GET", "/v1/nodes", auth=None, cert=a).status_code == 200
    assert _call(sim, tmp_path, "GET", "/v1/nodes", auth=None, cert=b).status_code == 401


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"mtls_certificate_authentication": "yes"}, "must be a boolean"),
        ({"mtls_client_cert_subject_validation_type": "cn"}, "must be one of"),
        ({"mtls_authorized_subjects": [{"XX": "a"}]}, "take the keys"),
        ({"no_such_field": 1}, "unknown field"),
        ({"name": "renamed"}, "read-only"),
        ({}, "non-empty"),
    ],
)
def test_put_cluster_refuses_bad_bodies(
    sim: SimulatedCluster, tmp_path: Path, body: dict[str, Any], fragment: str
) -> None:
    answer = _call(sim, tmp_path, "PUT", "/v1/cluster", body)
    assert answer.status_code == 400 and fragment in answer.json()["description"]


def test_basic_off_needs_8_2(tmp_path: Path) -> None:
    with SimulatedCluster("old", software_version="7.22.2-14") as old:
        answer = _call(
            old, tmp_path, "PUT", "/v1/cluster", {"control_plane_basic_authentication": False}
        )
        assert answer.status_code == 400 and "8.2" in answer.json()["description"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"email": "x@example.com", "role": "admin", "auth_method": "certificate"}, "required"),
        (
            {
                "email": "x@example.com",
                "role": "admin",
                "auth_method": "certificate",
                "certificate_subject_line": "CN=x, O=y",
            },
            "space after a comma",
        ),
        ({"email": "x@example.com", "role": "admin"}, "'password' is required"),
        ({"email": "x@example.com", "role": "admin", "color": "red"}, "unknown key"),
    ],
)
def test_post_users_refuses_bad_bodies(
    sim: SimulatedCluster, tmp_path: Path, body: dict[str, Any], fragment: str
) -> None:
    answer = _call(sim, tmp_path, "POST", "/v1/users", body)
    assert answer.status_code == 400 and fragment in answer.json()["description"]


def test_post_users_refuses_a_duplicate(sim: SimulatedCluster, tmp_path: Path) -> None:
    body = {"email": "admin@example.com", "role": "admin", "password": "x"}
    assert _call(sim, tmp_path, "POST", "/v1/users", body).status_code == 409


RSA_ONLY = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"


@pytest.mark.parametrize("path", ["/v1/cluster/certificates", "/v1/cluster/update_cert"])
def test_8_2_refuses_an_ecdsa_proxy_with_rsa_only_ciphers(
    sim: SimulatedCluster, tmp_path: Path, client_ca: OfflineCA, path: str
) -> None:
    cert, key = client_ca.leaf("proxy.example.com")  # EC key, serverAuth + clientAuth
    item = {"name": "proxy", "certificate": cert + client_ca.pem, "key": key}
    body = {"certificates": [item]} if path.endswith("certificates") else item
    assert _call(sim, tmp_path, "PUT", "/v1/cluster", {"data_cipher_list": RSA_ONLY}).ok
    refused = _call(sim, tmp_path, "PUT", path, body)
    assert refused.status_code == 400 and "ECDSA" in refused.json()["description"]
    assert sim.install_count == 0
    # The control plane ciphers do not matter for proxy; ECDSA data ciphers let it in.
    assert _call(sim, tmp_path, "PUT", "/v1/cluster", {"control_cipher_suites": RSA_ONLY}).ok
    both = f"{RSA_ONLY}:ECDHE-ECDSA-AES128-GCM-SHA256"
    assert _call(sim, tmp_path, "PUT", "/v1/cluster", {"data_cipher_list": both}).ok
    assert _call(sim, tmp_path, "PUT", path, body).status_code == 200


def test_before_8_2_an_ecdsa_proxy_goes_in(tmp_path: Path, client_ca: OfflineCA) -> None:
    with SimulatedCluster("old", software_version="7.22.2-14") as old:
        cert, key = client_ca.leaf("proxy.example.com")
        item = {"name": "proxy", "certificate": cert + client_ca.pem, "key": key}
        assert _call(old, tmp_path, "PUT", "/v1/cluster", {"data_cipher_list": RSA_ONLY}).ok
        assert _call(old, tmp_path, "PUT", "/v1/cluster/update_cert", item).status_code == 200
