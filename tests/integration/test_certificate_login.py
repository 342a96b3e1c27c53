"""Certificate login end to end: real OpenBao, a simulated 8.2 cluster with mTLS on its REST
listener, ``mtls_trusted_ca`` kept by vault_bridge, Basic authentication turned off."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from cryptography import x509
from vault_bridge_lab.lab import ADMIN, ADMIN_PASSWORD, cluster_table, lab_config, to_toml
from vault_bridge_lab.openbao import DEFAULT_ROLE, OpenBaoServer, PkiSetup, setup_pki
from vault_bridge_lab.simulator import SimulatedCluster

from tests.conftest import register_secret
from vault_bridge.cli.main import cli
from vault_bridge.config.loading import parse_config
from vault_bridge.decisions.policy import render_policy
from vault_bridge.models.certificates import CertificateInfo, split_pem_chain
from vault_bridge.rotation.app import build

pytestmark = pytest.mark.usefixtures("lab_env")

LOGIN_ROLE = "vault-bridge-login"
LOGIN_CN = "vault-bridge.east.example.com"
SUBJECT = f"CN={LOGIN_CN}"
# A client certificate only: no serverAuth, short lived.
LOGIN_ROLE_PARAMS = {**DEFAULT_ROLE, "server_flag": False, "client_flag": True, "max_ttl": "1h"}


@pytest.fixture
def own_pki(openbao: OpenBaoServer) -> PkiSetup:
    """A PKI of this test alone: its issuers change."""
    suffix = uuid.uuid4().hex[:8]
    return setup_pki(
        openbao.client(),
        mount=f"pki-root-login-{suffix}",
        int_mount=f"pki-login-{suffix}",
        roles={"redis": DEFAULT_ROLE, LOGIN_ROLE: LOGIN_ROLE_PARAMS},
    )


@pytest.fixture
def sim82() -> Iterator[SimulatedCluster]:
    with SimulatedCluster("east", software_version="8.2.0-25") as cluster:
        yield cluster


def _config(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    *,
    login: str,
    login_ttl: str = "720h",
    renew_before: str | None = None,
) -> dict[str, Any]:
    table = cluster_table(sim, tmp_path, role="redis")
    table["certificates"]["mtls_trusted_ca"] = {"pki_mount": pki.issuing_mount}
    if login == "certificate":
        del table["username"], table["password_env"]
        lc: dict[str, Any] = {"role": LOGIN_ROLE, "common_name": LOGIN_CN, "ttl": login_ttl}
        if renew_before:
            lc["renew_before"] = renew_before
        table["login"] = "certificate"
        table["login_certificate"] = lc
    return lab_config(
        openbao,
        pki,
        [table],
        state_dir=tmp_path / "state",
        defaults={"key_type": "ec", "key_bits": 256},
    )


def _admin(sim: SimulatedCluster, method: str, path: str, body: Any, ca: str) -> Any:
    """What an operator does once with the admin password (the one-time setup)."""
    response = requests.request(
        method, f"{sim.api_url}{path}", json=body, auth=(ADMIN, ADMIN_PASSWORD), verify=ca
    )
    assert response.status_code == 200, response.text
    return response.json()


def _one_time_setup(sim: SimulatedCluster, tmp_path: Path) -> None:
    ca = tmp_path / "setup-ca.pem"
    ca.write_text(sim.api_ca_pem(), encoding="utf-8")
    _admin(sim, "PUT", "/v1/cluster", {"mtls_certificate_authentication": True}, str(ca))
    _admin(
        sim,
        "POST",
        "/v1/users",
        {
            "email": "vault-bridge@example.com",
            "role": "admin",
            "auth_method": "certificate",
            "certificate_subject_line": SUBJECT,
        },
        str(ca),
    )


def _bundle_subjects(sim: SimulatedCluster) -> set[str]:
    return {
        CertificateInfo.from_pem(p).subject
        for p in split_pem_chain(sim.installed_pem("mtls_trusted_ca"))
    }


def _failures(sim: SimulatedCluster, since: int = 0) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in sim.requests[since:] if r.status >= 400]


def test_password_to_certificate_then_basic_off_and_short_lived_login(
    openbao: OpenBaoServer, own_pki: PkiSetup, sim82: SimulatedCluster, tmp_path: Path
) -> None:
    sim = sim82
    _one_time_setup(sim, tmp_path)
    # 1. Still on the password: vault_bridge installs mtls_trusted_ca (and the certificates).
    with build(parse_config(_config(openbao, own_pki, sim, tmp_path, login="password"))) as app:
        result = app.rotator.run_once()
        assert result.ok, result.summary()
    assert "mtls_trusted_ca" in {o.name for o in result.outcomes}
    root = CertificateInfo.from_pem(own_pki.root_pem).subject
    assert root in _bundle_subjects(sim)
    # 2. The configuration moves to a certificate; then Basic is turned off.
    doc = _config(
        openbao, own_pki, sim, tmp_path, login="certificate", login_ttl="6s", renew_before="3s"
    )
    mark = len(sim.requests)
    with build(parse_config(doc), sleep=lambda s: None) as app:
        assert app.rotator.run_once().ok
        sim.set_access(control_plane_basic_authentication=False)
        root_file = tmp_path / "root.pem"
        root_file.write_text(own_pki.root_pem, encoding="utf-8")
        refused = requests.get(
            f"{sim.api_url}/v1/cluster", auth=(ADMIN, ADMIN_PASSWORD), verify=str(root_file)
        )
        assert refused.status_code == 401  # Basic is off: only the certificate gets in
        # 3. The login certificate lives 6 s and renews itself 3 s before it expires: every
        # request of a 10 s stretch of passes succeeds.
        login = app.logins["east"]
        serials = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            result = app.rotator.status()
            assert not result.cluster_errors, result.cluster_errors
            assert login.held is not None
            serials.add(login.held.serial)
            time.sleep(0.5)
    assert len(serials) >= 3, serials  # renewed at least twice
    # Every request but the Basic probe above came with the client certificate and succeeded.
    assert _failures(sim, mark) == [("GET", "/v1/cluster", 401)]
    ours = [r for r in sim.requests[mark:] if r.status < 400]
    assert len(ours) > 20 and all(r.client_certificate for r in ours)
    assert {r.user for r in ours} == {"vault-bridge@example.com"}
    assert sim.handshake_failures.get("api", 0) == 0


def _new_default_issuer(openbao: OpenBaoServer, pki: PkiSetup, root_mount: str) -> tuple[str, str]:
    """A new intermediate on the issuing mount, made its default; (old id, new id)."""
    client = openbao.client()
    mount = pki.issuing_mount
    old = client.read(f"{mount}/config/issuers")["data"]["default"]
    csr = client.write_data(
        f"{mount}/intermediate/generate/internal",
        data={
            "common_name": f"Second Intermediate {mount}"[:63],
            "key_type": "ec",
            "key_bits": 256,
        },
    )["data"]["csr"]
    signed = client.write_data(
        f"{root_mount}/root/sign-intermediate",
        data={"csr": csr, "common_name": f"Second Intermediate {mount}"[:63], "ttl": "8760h"},
    )["data"]["certificate"]
    imported = client.write_data(
        f"{mount}/intermediate/set-signed", data={"certificate": f"{signed}\n{pki.root_pem}"}
    )["data"]["imported_issuers"]
    new = next(i for i in imported if i != old)
    client.write_data(f"{mount}/config/issuers", data={"default": new})
    return old, new


def test_trusted_ca_change_without_a_failed_login(
    openbao: OpenBaoServer, own_pki: PkiSetup, sim82: SimulatedCluster, tmp_path: Path
) -> None:
    sim = sim82
    _one_time_setup(sim, tmp_path)
    with build(parse_config(_config(openbao, own_pki, sim, tmp_path, login="password"))) as app:
        assert app.rotator.run_once().ok
    sim.set_access(control_plane_basic_authentication=False)
    doc = _config(openbao, own_pki, sim, tmp_path, login="certificate", login_ttl="30m")
    root_mount = own_pki.issuing_mount.replace("pki-login-", "pki-root-login-")
    mark = len(sim.requests)
    with build(parse_config(doc), sleep=lambda s: None) as app:
        assert app.rotator.run_once().ok
        login = app.logins["east"]
        assert login.held is not None
        first = login.held
        old_ca = first.info.issuer

        def trusted_state() -> str:
            rows = {s.name: s.state for s in app.rotator.status().statuses}
            return rows["mtls_trusted_ca"]

        assert trusted_state() == "ok"
        old_id, _new_id = _new_default_issuer(openbao, own_pki, root_mount)
        assert trusted_state() == "due"  # status and plan show the bundle the pass will install
        # The pass trusts both CAs, then the login certificate moves to the new issuer.
        result = app.rotator.run_once()
        assert result.ok, result.summary()
        subjects = _bundle_subjects(sim)
        new_ca = next(s for s in subjects if s.startswith("CN=Second Intermediate"))
        assert old_ca in subjects and new_ca in subjects
        assert login.held is not None and login.held.info.issuer == new_ca
        # The old issuer leaves the mount: the bundle drops it, nothing in use needs it.
        openbao.client().adapter.delete(f"/v1/{own_pki.issuing_mount}/issuer/{old_id}")
        assert app.rotator.run_once().ok
        subjects = _bundle_subjects(sim)
        assert old_ca not in subjects and new_ca in subjects
        assert trusted_state() == "ok"
        assert not app.rotator.status().cluster_errors
    assert _failures(sim, mark) == []
    assert sim.handshake_failures.get("api", 0) == 0
    assert (
        x509.load_pem_x509_certificate(first.certificate.encode()).issuer.rfc4514_string() == old_ca
    )


def _validate(doc: dict[str, Any], tmp_path: Path) -> Any:
    path = tmp_path / "config.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["--config", str(path), "validate", "--connect"], catch_exceptions=False
    )
    print(result.output)  # for the suite-wide secret scan
    return result


def test_validate_connect_says_which_login_and_catches_the_cipher_mismatch(
    openbao: OpenBaoServer, own_pki: PkiSetup, sim82: SimulatedCluster, tmp_path: Path
) -> None:
    sim = sim82
    _one_time_setup(sim, tmp_path)
    password_doc = _config(openbao, own_pki, sim, tmp_path, login="password")
    result = _validate(password_doc, tmp_path)
    assert result.exit_code == 0, result.output
    assert (
        "cluster east: logged in with password of admin@example.com; it accepts password "
        "(Basic), client certificate (mTLS)" in result.output
    )
    # Only RSA ciphers for the databases, and proxy asks for an EC key: caught before issuing.
    sim.set_access(data_cipher_list="ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256")
    result = _validate(password_doc, tmp_path)
    assert result.exit_code == 1
    assert "proxy is configured with an EC key" in result.output
    assert "data_cipher_list enables RSA ciphers only" in result.output
    assert sim.install_count == 0
    sim.set_access(data_cipher_list="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
    # The trusted CA goes in with the password; then Basic is turned off.
    with build(parse_config(password_doc)) as app:
        assert app.rotator.run_once().ok
    sim.set_access(control_plane_basic_authentication=False)
    result = _validate(password_doc, tmp_path)
    assert result.exit_code == 1
    assert "wrong username or password, or Basic authentication is turned off" in result.output
    cert_doc = _config(openbao, own_pki, sim, tmp_path, login="certificate", login_ttl="30m")
    result = _validate(cert_doc, tmp_path)
    assert result.exit_code == 0, result.output
    assert (
        f"cluster east: logged in with client certificate {SUBJECT}; it accepts client "
        "certificate (mTLS)" in result.output
    )


def test_policy_grants_exactly_the_login_role_and_suffices(
    openbao: OpenBaoServer,
    own_pki: PkiSetup,
    sim82: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim82
    _one_time_setup(sim, tmp_path)
    with build(parse_config(_config(openbao, own_pki, sim, tmp_path, login="password"))) as app:
        assert app.rotator.run_once().ok
    sim.set_access(control_plane_basic_authentication=False)
    settings = parse_config(
        _config(openbao, own_pki, sim, tmp_path, login="certificate", login_ttl="30m")
    )
    text = render_policy(settings)
    paths = [line.split('"')[1] for line in text.splitlines() if line.startswith("path ")]
    m = own_pki.issuing_mount
    assert paths == [
        f"{m}/sign/redis",
        f"{m}/sign/{LOGIN_ROLE}",
        f"{m}/roles/redis",
        f"{m}/roles/{LOGIN_ROLE}",
        f"{m}/revoke",
        "auth/token/renew-self",
        "auth/token/lookup-self",
    ]
    # A token with only that policy: the issuer reads (LIST issuers, issuer JSON) need none.
    root = openbao.client()
    name = f"vb-login-{uuid.uuid4().hex[:8]}"
    root.sys.create_or_update_policy(name=name, policy=text)
    token = root.auth.token.create(policies=[name], no_default_policy=True, ttl="1h")["auth"][
        "client_token"
    ]
    register_secret(token)
    monkeypatch.setenv("VAULT_TOKEN", token)
    with build(settings) as app:
        result = app.rotator.run_once(force=[("east", "proxy")])
        assert result.ok, result.summary()
        assert app.logins["east"].held is not None


def test_the_agent_keeps_its_login_certificate_renewed_with_basic_off(
    openbao: OpenBaoServer, pki: PkiSetup, tmp_path: Path
) -> None:
    """The daemon on a cluster with Basic off: it logs in with its certificate and renews it
    at its renewal time while otherwise idle (20 s lifetime), without a refused request."""
    from tests.integration.test_agent import Lab

    lab = Lab(tmp_path, openbao, pki, names=("proxy",), ttl="1h")
    try:
        sim = lab.sim
        sim.set_software_version("8.2.0-25")
        doc = lab.document()
        table = doc["clusters"][0]
        table["certificates"]["mtls_trusted_ca"] = {"pki_mount": pki.issuing_mount}
        with build(parse_config(doc)) as app:  # the trusted CA, still with the password
            assert app.rotator.run_once().ok
        sim.set_access(mtls_certificate_authentication=True)
        sim.add_certificate_user("vault-bridge@example.com", SUBJECT)
        sim.set_access(control_plane_basic_authentication=False)
        del table["username"], table["password_env"]
        table["login"] = "certificate"
        table["login_certificate"] = {
            "role": "redis",
            "common_name": LOGIN_CN,
            "ttl": "20s",
            "renew_before": "12s",
        }
        lab.write_config(text=to_toml(doc))
        mark = len(sim.requests)
        with lab.daemon("certificate-login") as agent:
            agent.wait_ready()
            time.sleep(18)
            metrics = agent.metrics()
            ready = agent.ready()
            issued = agent.messages("issued a login certificate")
            assert agent.stop() == 0
    finally:
        lab.close()
    assert ready
    assert len(issued) >= 3, issued  # the first, then renewed at least twice while idle
    assert _failures(sim, mark) == []
    assert sim.handshake_failures.get("api", 0) == 0
    key = (
        "vault_bridge_certificate_ready_status",
        (("cluster", "east"), ("condition", "True"), ("name", "login_certificate")),
    )
    assert metrics[key] == 1.0


def test_a_replaced_login_certificate_is_revoked_after_the_grace_period(
    openbao: OpenBaoServer,
    own_pki: PkiSetup,
    sim82: SimulatedCluster,
    tmp_path: Path,
) -> None:
    """Each `run --once` logs in with a new certificate; the one an earlier run held is queued
    and revoked through the revocation queue once revoke_grace is over, never the one held."""
    sim = sim82
    _one_time_setup(sim, tmp_path)
    with build(parse_config(_config(openbao, own_pki, sim, tmp_path, login="password"))) as app:
        assert app.rotator.run_once().ok
    doc = _config(openbao, own_pki, sim, tmp_path, login="certificate", login_ttl="30m")
    doc["agent"]["revoke_grace"] = "1s"
    config = tmp_path / "config.toml"
    config.write_text(to_toml(doc), encoding="utf-8")
    mount = own_pki.issuing_mount

    def login_serials() -> list[str]:
        client = openbao.client()
        out = []
        for serial in client.secrets.pki.list_certificates(mount_point=mount)["data"]["keys"]:
            pem = client.secrets.pki.read_certificate(serial=serial, mount_point=mount)["data"]
            info = CertificateInfo.from_pem(pem["certificate"])
            if info.subject == SUBJECT:
                out.append(info.serial)
        return out

    def revoked(serial: str) -> bool:
        data = openbao.client().secrets.pki.read_certificate(serial=serial, mount_point=mount)
        return int(data["data"].get("revocation_time") or 0) > 0

    def run_once() -> None:
        result = CliRunner().invoke(cli, ["--config", str(config), "run", "--once"])
        print(result.output)
        assert result.exit_code == 0, result.output

    run_once()
    [first] = login_serials()
    run_once()
    [second] = [s for s in login_serials() if s != first]
    assert not revoked(first)  # queued, inside the grace period
    time.sleep(1.2)
    run_once()
    assert revoked(first)
    assert not revoked(second)  # queued by this run: its grace period has just begun
    assert not [r for r in sim.requests if r.status == 401]  # no login refused
