"""The simulated Redis Enterprise cluster follows the REST contract, over real TLS on loopback."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from vault_bridge_lab.simulator import LISTENERS, RecordedRequest, SimulatedCluster

from vault_bridge.models.certificates import split_pem_chain

ADMIN = ("admin@example.com", "admin-password")
VIEWER = ("viewer@example.com", "viewer-password")
BULK = "/v1/cluster/certificates"
SINGLE = "/v1/cluster/update_cert"
REPO = Path(__file__).resolve().parents[2]
BOTH_EKUS = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


# --------------------------------------------------------------------------- test PKI


@dataclass(frozen=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Leaf:
    chain: str  # leaf, then the intermediate
    key: str
    cert: x509.Certificate


def _pem_key(key: CertificateIssuerPrivateKeyTypes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@functools.cache
def _rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _make_ca(cn: str, parent: Issuer | None) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(parent.cert.subject if parent else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(parent.key if parent else key, hashes.SHA256())
    )
    return Issuer(cert, key)


def make_leaf(
    issuer: Issuer,
    *,
    cn: str = "leaf.test",
    key: CertificateIssuerPrivateKeyTypes | None = None,
    ekus: tuple[x509.ObjectIdentifier, ...] = BOTH_EKUS,
    expired: bool = False,
) -> Leaf:
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    not_before, not_after = (
        (now - timedelta(days=10), now - timedelta(days=1))
        if expired
        else (now - timedelta(minutes=1), now + timedelta(days=30))
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    )
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    cert = builder.sign(issuer.key, hashes.SHA256())
    chain = cert.public_bytes(serialization.Encoding.PEM).decode() + issuer.pem
    return Leaf(chain=chain, key=_pem_key(key), cert=cert)


@dataclass(frozen=True)
class Pki:
    root: Issuer
    intermediate: Issuer
    root_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = _make_ca("Test Root", None)
    intermediate = _make_ca("Test Intermediate", root)
    root_file = tmp_path_factory.mktemp("pki") / "root.pem"
    root_file.write_text(root.pem)
    return Pki(root, intermediate, root_file)


# --------------------------------------------------------------------------- clients


class Api:
    """A requests session against the simulator; every call passes ``verify`` explicitly."""

    def __init__(self, sim: SimulatedCluster, verify: Path) -> None:
        self.sim = sim
        self.verify = verify
        self.session = requests.Session()

    def call(
        self,
        method: str,
        path: str,
        *,
        auth: tuple[str, str] | None = ADMIN,
        body: Any = None,
        data: str | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        with self.session.request(
            method,
            self.sim.api_url + path,
            auth=auth,
            json=body,
            data=data,
            verify=str(self.verify),
            timeout=10,
        ) as response:
            payload = response.json() if response.content else None
            return response.status_code, payload, dict(response.headers)


def address(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.rsplit(":", 1)
    return host, int(port)


def served_leaf(endpoint: str, cafile: Path) -> x509.Certificate:
    """The leaf a fresh TLS handshake sees, verified against ``cafile`` and 127.0.0.1."""
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(address(endpoint), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=address(endpoint)[0]) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.fixture
def sim() -> Iterator[SimulatedCluster]:
    with SimulatedCluster("east") as cluster:
        yield cluster


def _api(sim: SimulatedCluster, tmp_path: Path) -> Iterator[Api]:
    ca = tmp_path / f"{sim.name}-api-ca.pem"
    ca.write_text(sim.api_ca_pem())
    client = Api(sim, ca)
    try:
        yield client
    finally:
        client.session.close()


@pytest.fixture
def api(sim: SimulatedCluster, tmp_path: Path) -> Iterator[Api]:
    yield from _api(sim, tmp_path)


def item(name: str, leaf: Leaf) -> dict[str, str]:
    return {"name": name, "certificate": leaf.chain, "key": leaf.key}


def send(api: Api, endpoint: str, items: list[dict[str, Any]]) -> tuple[int, Any]:
    """One install through the bulk endpoint (all items) or update_cert (the one item)."""
    if endpoint == BULK:
        status, body, _ = api.call("PUT", BULK, body={"certificates": items})
    else:
        (single,) = items
        status, body, _ = api.call("PUT", SINGLE, body=single)
    return status, body


# --------------------------------------------------------------------------- lifecycle


def _listening(endpoint: str) -> bool:
    try:
        with socket.create_connection(address(endpoint), timeout=1):
            return True
    except OSError:
        return False


def test_starts_fast_and_stop_leaves_nothing_listening() -> None:
    cluster = SimulatedCluster("fast")
    began = time.monotonic()
    cluster.start()
    started = time.monotonic() - began
    endpoints = [cluster.endpoint(listener) for listener in LISTENERS]
    assert all(_listening(e) for e in endpoints)
    assert len(set(endpoints)) == 4
    stall = socket.create_connection(address(endpoints[0]))  # never handshakes
    try:
        began = time.monotonic()
        cluster.stop()
        stopped = time.monotonic() - began
    finally:
        stall.close()
    cluster.stop()  # idempotent
    assert started < 1.0
    assert stopped < 1.0
    assert not any(_listening(e) for e in endpoints)
    assert not [t for t in threading.enumerate() if t.name.startswith("sim-fast")]


def test_fixed_ports_and_url() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with SimulatedCluster("fixed", ports={"api": port}) as cluster:
        assert cluster.api_url == f"https://127.0.0.1:{port}"
        assert cluster.endpoint("api") == f"127.0.0.1:{port}"
    with pytest.raises(ValueError, match="unknown listener"):
        SimulatedCluster(ports={"syncer": 1})


def test_port_in_use_fails_start_and_leaks_nothing() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cluster = SimulatedCluster("busy", ports={"proxy": busy.getsockname()[1]})
        with pytest.raises(OSError):
            cluster.start()
    cluster.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("sim-busy")]


def test_stalled_client_does_not_block_others(sim: SimulatedCluster, api: Api) -> None:
    with socket.create_connection(address(sim.endpoint("api"))):
        began = time.monotonic()
        status, _, _ = api.call("GET", "/v1/nodes")
        assert status == 200
        assert time.monotonic() - began < 1.0


# --------------------------------------------------------------------------- auth and routing


@pytest.mark.parametrize(
    ("method", "path", "auth", "status"),
    [
        ("GET", "/v1/nodes", None, 401),
        ("GET", "/v1/nodes", ("admin@example.com", "wrong"), 401),
        ("GET", "/v1/nodes", ("nobody@example.com", "admin-password"), 401),
        ("PUT", BULK, None, 401),
        ("GET", BULK, VIEWER, 200),
        ("GET", "/v1/cluster", VIEWER, 200),
        ("PUT", BULK, VIEWER, 403),
        ("PUT", SINGLE, VIEWER, 403),
        ("GET", "/v1/nope", ADMIN, 404),
        ("GET", "/v1/nodes/9", ADMIN, 404),
        ("POST", BULK, ADMIN, 405),
        ("DELETE", "/v1/cluster", ADMIN, 405),
        ("GET", SINGLE, ADMIN, 405),
    ],
)
def test_auth_roles_and_routes(
    api: Api, method: str, path: str, auth: tuple[str, str] | None, status: int
) -> None:
    got, body, headers = api.call(method, path, auth=auth, body={"certificates": []})
    assert got == status
    if status >= 400:
        assert set(body) == {"error_code", "description"}
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Basic")
    if status == 405:
        assert headers["Allow"]


def test_reads(sim: SimulatedCluster, api: Api) -> None:
    status, nodes, _ = api.call("GET", "/v1/nodes", auth=VIEWER)
    assert status == 200
    assert [(n["uid"], n["software_version"], n["status"]) for n in nodes] == [
        (uid, "7.22.2-14", "active") for uid in (1, 2, 3)
    ]
    status, cluster, _ = api.call("GET", "/v1/cluster")
    assert cluster["name"] == "east"
    assert cluster["proxy_certificate"] == sim.installed_pem("proxy")
    assert cluster["syncer_certificate"] == sim.installed_pem("syncer")
    status, certs, _ = api.call("GET", BULK)
    names = {
        "cm",
        "api",
        "proxy",
        "syncer",
        "metrics_exporter",
        "ldap_client",
        "ccs_internode_encryption",
        "data_internode_encryption",
    }
    assert set(certs) == {f"{n}_{part}" for n in names for part in ("cert", "key")}
    for name in ("ccs_internode_encryption", "data_internode_encryption"):
        key = serialization.load_pem_private_key(certs[f"{name}_key"].encode(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
    assert certs["api_cert"] == sim.api_ca_pem()
    leaf = x509.load_pem_x509_certificate(certs["cm_cert"].encode())
    assert leaf.subject.rfc4514_string() == "CN=cm.east.sim"


# --------------------------------------------------------------------------- rejections


def _encrypted_key() -> str:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        .decode()
    )


ItemMaker = Callable[[Pki], dict[str, Any]]

#: (id, item maker, bulk status, update_cert status, error_code)
REJECTIONS: list[tuple[str, ItemMaker, int, int, str]] = [
    (
        "unknown-name",
        lambda p: item("nginx", make_leaf(p.intermediate)),
        403,
        403,
        "unknown_certificate_name",
    ),
    (
        "not-pem",
        lambda p: {**item("proxy", make_leaf(p.intermediate)), "certificate": "hello"},
        400,
        404,
        "invalid_certificate",
    ),
    (
        "broken-pem",
        lambda p: {
            **item("proxy", make_leaf(p.intermediate)),
            "certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        },
        400,
        404,
        "invalid_certificate",
    ),
    (
        "chain-out-of-order",
        lambda p: {
            **item("proxy", leaf := make_leaf(p.intermediate)),
            "certificate": split_pem_chain(leaf.chain)[0] + p.root.pem + p.intermediate.pem,
        },
        400,
        404,
        "invalid_certificate",
    ),
    (
        "key-mismatch",
        lambda p: {
            **item("proxy", make_leaf(p.intermediate)),
            "key": make_leaf(p.intermediate).key,
        },
        400,
        400,
        "key_values_mismatch",
    ),
    (
        "key-garbage",
        lambda p: {**item("proxy", make_leaf(p.intermediate)), "key": "not a key"},
        400,
        400,
        "invalid_key",
    ),
    (
        "key-encrypted",
        lambda p: {**item("proxy", make_leaf(p.intermediate)), "key": _encrypted_key()},
        400,
        400,
        "invalid_key",
    ),
    (
        "key-missing",
        lambda p: {"name": "proxy", "certificate": make_leaf(p.intermediate).chain},
        400,
        400,
        "invalid_request",
    ),
    (
        "expired",
        lambda p: item("proxy", make_leaf(p.intermediate, expired=True)),
        406,
        406,
        "certificate_expired",
    ),
    (
        "no-eku",
        lambda p: item("proxy", make_leaf(p.intermediate, ekus=())),
        400,
        400,
        "invalid_extended_key_usage",
    ),
    (
        "server-auth-only",
        lambda p: item("proxy", make_leaf(p.intermediate, ekus=(ExtendedKeyUsageOID.SERVER_AUTH,))),
        400,
        400,
        "invalid_extended_key_usage",
    ),
    (
        "rsa-1024",
        lambda p: item("proxy", make_leaf(p.intermediate, key=_rsa_key(1024))),
        400,
        400,
        "weak_key",
    ),
    (
        "internode-ec",
        lambda p: item("ccs_internode_encryption", make_leaf(p.intermediate)),
        400,
        400,
        "unsupported_key_type",
    ),
    (
        "mtls-ca-with-key",
        lambda p: {
            "name": "mtls_trusted_ca",
            "certificate": p.root.pem,
            "key": _pem_key(p.root.key),
        },
        400,
        400,
        "invalid_request",
    ),
    (
        "extra-item-key",
        lambda p: {**item("proxy", make_leaf(p.intermediate)), "force": True},
        400,
        400,
        "invalid_request",
    ),
]


@pytest.mark.parametrize("endpoint", [BULK, SINGLE])
@pytest.mark.parametrize(
    ("maker", "bulk_status", "single_status", "error_code"),
    [pytest.param(*case[1:], id=case[0]) for case in REJECTIONS],
)
def test_rejections(
    sim: SimulatedCluster,
    api: Api,
    pki: Pki,
    endpoint: str,
    maker: ItemMaker,
    bulk_status: int,
    single_status: int,
    error_code: str,
) -> None:
    before = sim.installed_pem("proxy")
    status, body = send(api, endpoint, [maker(pki)])
    assert status == (bulk_status if endpoint == BULK else single_status)
    assert body["error_code"] == error_code
    assert body["description"]
    assert sim.install_count == 0
    assert sim.installed_pem("proxy") == before
    assert "BEGIN" not in body["description"]  # never echoes a key or certificate


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"certificates": []},
        {"certificates": "proxy"},
        {"certificates": [{"name": "proxy"}]},
        {"certificates": [], "force": True},
        [],
    ],
    ids=["empty", "empty-list", "not-a-list", "no-certificate", "extra-top-key", "array"],
)
def test_bulk_rejects_malformed_bodies(api: Api, body: Any) -> None:
    status, answer, _ = api.call("PUT", BULK, body=body)
    assert (status, answer["error_code"]) == (400, "invalid_request")


def test_bad_json_is_400(api: Api) -> None:
    for path in (BULK, SINGLE):
        status, answer, _ = api.call("PUT", path, data="{not json")
        assert (status, answer["error_code"]) == (400, "invalid_json")


def test_bulk_rejects_internode_mixed_with_others_and_duplicates(
    sim: SimulatedCluster, api: Api, pki: Pki
) -> None:
    internode = item("ccs_internode_encryption", make_leaf(pki.intermediate, key=_rsa_key(2048)))
    proxy = item("proxy", make_leaf(pki.intermediate))
    status, body = send(api, BULK, [internode, proxy])
    assert status == 400
    assert "own" in body["description"]
    status, _ = send(api, BULK, [proxy, proxy])
    assert status == 400
    assert sim.install_count == 0


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        (lambda p: item("api", make_leaf(p.intermediate, expired=True)), 406),
        (lambda p: item("nginx", make_leaf(p.intermediate)), 403),
        (lambda p: {**item("api", make_leaf(p.intermediate)), "key": "x"}, 400),
    ],
    ids=["expired", "unknown-name", "bad-key"],
)
def test_bulk_is_atomic(
    sim: SimulatedCluster, api: Api, pki: Pki, bad: ItemMaker, status: int
) -> None:
    before = {n: sim.installed_pem(n) for n in ("proxy", "api")}
    got, _ = send(api, BULK, [item("proxy", make_leaf(pki.intermediate)), bad(pki)])
    assert got == status
    assert {n: sim.installed_pem(n) for n in before} == before
    assert sim.install_count == 0


# --------------------------------------------------------------------------- installs


def test_bulk_install_is_served_everywhere(
    sim: SimulatedCluster, api: Api, pki: Pki, tmp_path: Path
) -> None:
    leaves = {name: make_leaf(pki.intermediate, cn=f"{name}.test") for name in LISTENERS}
    status, _, headers = api.call(
        "PUT", BULK, body={"certificates": [item(n, leaf) for n, leaf in leaves.items()]}
    )
    assert status == 200
    assert headers["Connection"] == "close"  # the api certificate changed under this connection
    assert sim.install_count == 4

    # Verified against the root alone: the intermediate is served with the leaf.
    for name, leaf in leaves.items():
        assert served_leaf(sim.endpoint(name), pki.root_file) == leaf.cert
        assert sim.installed_pem(name) == leaf.chain
    assert sim.api_ca_pem() == pki.intermediate.pem

    api.verify = pki.root_file
    status, certs, _ = api.call("GET", BULK)
    assert status == 200
    for name, leaf in leaves.items():
        assert (certs[f"{name}_cert"], certs[f"{name}_key"]) == (leaf.chain, leaf.key)
    _, cluster, _ = api.call("GET", "/v1/cluster")
    assert cluster["proxy_certificate"] == leaves["proxy"].chain

    with requests.get(
        f"https://{sim.endpoint('metrics_exporter')}/metrics", verify=str(pki.root_file), timeout=5
    ) as response:
        metrics = response.text
    line = next(x for x in metrics.splitlines() if 'logical_name="proxy"' in x)
    assert line.startswith("node_cert_expiration_seconds{")
    assert 29 * 86400 < float(line.split()[-1]) <= 30 * 86400

    with requests.get(f"https://{sim.endpoint('cm')}/", verify=str(pki.root_file), timeout=5) as r:
        assert r.status_code == 200
        assert "east" in r.text

    context = ssl.create_default_context(cafile=str(pki.root_file))
    with (
        socket.create_connection(address(sim.endpoint("proxy")), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert tls.recv(64) == b"+PONG\r\n"


def test_update_cert_installs_one(sim: SimulatedCluster, api: Api, pki: Pki) -> None:
    leaf = make_leaf(pki.intermediate, key=_rsa_key(2048))
    status, body = send(api, SINGLE, [item("proxy", leaf)])
    assert (status, body) == (200, {})
    assert sim.install_count == 1
    assert served_leaf(sim.endpoint("proxy"), pki.root_file) == leaf.cert
    status, _ = send(api, SINGLE, [{"name": "mtls_trusted_ca", "certificate": pki.root.pem}])
    assert status == 200
    _, certs, _ = api.call("GET", BULK)
    assert certs["mtls_trusted_ca_cert"] == pki.root.pem
    assert "mtls_trusted_ca_key" not in certs


def test_bulk_installs_internode_alone(sim: SimulatedCluster, api: Api, pki: Pki) -> None:
    items = [
        item(name, make_leaf(pki.intermediate, key=_rsa_key(2048)))
        for name in ("ccs_internode_encryption", "data_internode_encryption")
    ]
    assert send(api, BULK, items) == (200, {})
    assert sim.install_count == 2


def test_old_cluster_has_no_bulk_endpoint(pki: Pki, tmp_path: Path) -> None:
    with SimulatedCluster("old", software_version="7.8.4-66") as old:
        for api in _api(old, tmp_path):
            status, body = send(api, BULK, [item("proxy", make_leaf(pki.intermediate))])
            assert status == 404
            assert set(body) == {"error_code", "description"}
            status, body = send(
                api, SINGLE, [item("ccs_internode_encryption", make_leaf(pki.intermediate))]
            )
            assert (status, body["error_code"]) == (403, "unknown_certificate_name")
            _, certs, _ = api.call("GET", BULK)
            assert "ccs_internode_encryption_cert" not in certs
            assert "ldap_client_cert" in certs
            leaf = make_leaf(pki.intermediate)
            assert send(api, SINGLE, [item("proxy", leaf)]) == (200, {})
            assert old.install_count == 1
            assert served_leaf(old.endpoint("proxy"), pki.root_file) == leaf.cert


def test_lowest_node_version_decides_and_upgrade_enables_bulk(pki: Pki, tmp_path: Path) -> None:
    mixed = SimulatedCluster("mixed", node_versions=["7.22.2-14", "7.8.4-66", "7.22.2-14"])
    with mixed:
        for api in _api(mixed, tmp_path):
            _, nodes, _ = api.call("GET", "/v1/nodes")
            assert [n["software_version"] for n in nodes] == ["7.22.2-14", "7.8.4-66", "7.22.2-14"]
            proxy = item("proxy", make_leaf(pki.intermediate))
            assert send(api, BULK, [proxy])[0] == 404
            mixed.set_software_version("7.22.2-14")
            assert send(api, BULK, [proxy]) == (200, {})
            _, certs, _ = api.call("GET", BULK)
            assert "data_internode_encryption_cert" in certs


# --------------------------------------------------------------------------- faults, records


def test_inject_fault(sim: SimulatedCluster, api: Api, pki: Pki) -> None:
    sim.inject_fault("PUT", BULK, 503, times=2)
    sim.inject_fault("GET", "/v1/cluster", 409, body={"error_code": "busy", "description": "x"})
    proxy = item("proxy", make_leaf(pki.intermediate))
    first, second = send(api, BULK, [proxy]), send(api, BULK, [proxy])
    assert first[0] == second[0] == 503
    assert first[1]["error_code"] == "injected"
    assert sim.install_count == 0
    assert api.call("GET", "/v1/nodes")[0] == 200  # other paths are untouched
    assert send(api, BULK, [proxy]) == (200, {})
    assert api.call("GET", "/v1/cluster")[:2] == (409, {"error_code": "busy", "description": "x"})
    assert api.call("GET", "/v1/cluster")[0] == 200


def test_inject_delay_then_handle(sim: SimulatedCluster, api: Api) -> None:
    sim.inject_fault("GET", "/v1/nodes", 0, delay=0.2)
    began = time.monotonic()
    status, _, _ = api.call("GET", "/v1/nodes", auth=None)
    assert status == 401  # delayed, then handled normally
    assert time.monotonic() - began >= 0.2
    with pytest.raises(ValueError):
        sim.inject_fault("GET", "/v1/nodes", 42)


def test_requests_are_recorded(sim: SimulatedCluster, api: Api) -> None:
    began = time.monotonic()
    api.call("GET", "/v1/nodes?fields=uid", auth=VIEWER)
    api.call("PUT", BULK, auth=None, body={})
    assert [(r.method, r.path, r.status, r.user) for r in sim.requests] == [
        ("GET", "/v1/nodes", 200, "viewer@example.com"),
        ("PUT", BULK, 401, None),
    ]
    assert all(isinstance(r, RecordedRequest) and r.at >= began for r in sim.requests)


def test_metrics_exporter_paths(sim: SimulatedCluster, tmp_path: Path) -> None:
    ca = tmp_path / "metrics.pem"
    ca.write_text(sim.installed_pem("metrics_exporter"))
    base = f"https://{sim.endpoint('metrics_exporter')}"
    with requests.get(f"{base}/metrics", verify=str(ca), timeout=5) as response:
        names = {
            line.split('"')[1] for line in response.text.splitlines() if not line.startswith("#")
        }
    assert {"api", "cm", "proxy", "syncer", "metrics_exporter"} <= names
    with requests.get(f"{base}/other", verify=str(ca), timeout=5) as response:
        assert response.status_code == 404


# --------------------------------------------------------------------------- standalone


def test_standalone_runs_until_sigterm(tmp_path: Path) -> None:
    password_file = tmp_path / "admin-password"
    password_file.write_text("s3cret\n")
    ca_out = tmp_path / "api-ca.pem"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "vault_bridge_lab.simulator",
        "--name",
        "west",
        "--version",
        "7.8.4-66",
        "--admin-password-file",
        str(password_file),
        "--api-ca-out",
        str(ca_out),
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            assert info["api_ca_file"] == str(ca_out)
            assert set(info["endpoints"]) == set(LISTENERS)
            with requests.get(
                info["api_url"] + "/v1/nodes",
                auth=("admin@example.com", "s3cret"),
                verify=str(ca_out),
                timeout=5,
            ) as response:
                assert {n["software_version"] for n in response.json()} == {"7.8.4-66"}
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0
    assert "s3cret" not in stderr
