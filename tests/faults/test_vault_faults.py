"""Vault down, sealed, failing, slow, lying, or refusing our token: a clear line, exit 1, the
old certificates still served, nothing secret printed, and recovery on the next run. Vault is the
real OpenBao server; a relay in front of it (:mod:`tests.faults.vault_relay`) misbehaves."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

from tests.conftest import register_secret
from tests.faults.conftest import NAMES, write_config
from tests.faults.outcome import assert_clear_failure, installed, invoke
from tests.faults.vault_relay import VaultRelay

pytestmark = [pytest.mark.fault("vault"), pytest.mark.usefixtures("lab_env")]

SEALED = '{"errors": ["Vault is sealed"]}'


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relayed(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    relay: VaultRelay,
    **vault: object,
) -> str:
    return write_config(
        openbao, pki, [east], tmp_path, vault={"address": relay.address, "ca_cert": None, **vault}
    )


def fails_then_recovers(
    config: str, east: SimulatedCluster, relay: VaultRelay, *needles: str
) -> None:
    before = installed(east, NAMES)
    assert_clear_failure(invoke("--config", config, "run", "--once"), 1, *needles)
    assert installed(east, NAMES) == before
    relay.clear()
    again = invoke("--config", config, "run", "--once")
    assert again.exit_code == 0, again.output
    assert installed(east, NAMES) != before


def test_vault_down(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    config = write_config(
        openbao, pki, [east], tmp_path, vault={"address": f"https://127.0.0.1:{closed_port()}"}
    )
    before = installed(east, NAMES)
    assert_clear_failure(invoke("--config", config, "run", "--once"), 1, "cannot reach Vault")
    assert installed(east, NAMES) == before
    recovered = write_config(openbao, pki, [east], tmp_path)
    assert invoke("--config", recovered, "run", "--once").exit_code == 0


@pytest.mark.parametrize(
    ("prefix", "status", "body", "needle"),
    [
        ("/v1/", 503, SEALED, "Vault is sealed"),
        ("/v1/", 500, '{"errors": ["internal error"]}', "internal error"),
        ("/v1/", 502, "<html>bad gateway</html>", "Vault"),
        ("/v1/pki", 503, SEALED, "Vault is sealed"),  # every mount of this suite: pki-...
    ],
    ids=["sealed", "500", "502-html", "sealed-after-login"],
)
def test_vault_answers_an_error(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    relay: VaultRelay,
    prefix: str,
    status: int,
    body: str,
    needle: str,
) -> None:
    relay.fail(prefix, status, body)
    fails_then_recovers(relayed(openbao, pki, east, tmp_path, relay), east, relay, needle)


def test_vault_slow_past_its_timeout(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    relay: VaultRelay,
) -> None:
    relay.fail("/v1/", 0, delay=2.0)
    config = relayed(openbao, pki, east, tmp_path, relay, timeout=0.5)
    fails_then_recovers(config, east, relay, "cannot reach Vault")


@pytest.mark.parametrize(
    "body",
    [
        '{"data": {"certificate": "garbage", "ca_chain": []}}',
        '{"data": {"ca_chain": 5}}',
        "not json at all",
        '{"data": null}',
    ],
    ids=["garbage-pem", "wrong-types", "not-json", "no-data"],
)
def test_vault_malformed_sign_answer(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    relay: VaultRelay,
    body: str,
) -> None:
    relay.fail(f"/v1/{pki.issuing_mount}/sign/", 200, body)
    fails_then_recovers(relayed(openbao, pki, east, tmp_path, relay), east, relay)


def test_token_revoked(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = openbao.client()
    token = str(root.auth.token.create(policies=["root"], ttl="1h")["auth"]["client_token"])
    register_secret(token)
    root.auth.token.revoke(token)
    monkeypatch.setenv("VAULT_TOKEN", token)
    config = write_config(openbao, pki, [east], tmp_path)
    before = installed(east, NAMES)
    ran = invoke("--config", config, "run", "--once")
    assert_clear_failure(ran, 1, "token")
    assert installed(east, NAMES) == before
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    assert invoke("--config", config, "run", "--once").exit_code == 0


def test_missing_capability(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = openbao.client()
    name = f"vb-read-only-{uuid.uuid4().hex[:8]}"
    mount = pki.issuing_mount
    root.sys.create_or_update_policy(
        name=name, policy=f'path "{mount}/cert/*" {{ capabilities = ["read"] }}\n'
    )
    token = str(root.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"])
    register_secret(token)
    monkeypatch.setenv("VAULT_TOKEN", token)
    config = write_config(openbao, pki, [east], tmp_path)
    before = installed(east, NAMES)
    ran = invoke("--config", config, "run", "--once")
    assert_clear_failure(ran, 1, "permission denied: the policy needs 'update'")
    assert installed(east, NAMES) == before
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    assert invoke("--config", config, "run", "--once").exit_code == 0
