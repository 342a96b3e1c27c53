"""Vault sealed for real: an OpenBao with Raft storage (initialised, one unseal key) is sealed
through ``sys/seal`` while a certificate is due. The pass fails with one clear line and exit 1,
the old certificates stay installed and served, nothing secret is printed; after ``sys/unseal``
the next pass replaces the due certificate. :mod:`tests.faults.test_vault_faults` fakes the
sealed answer with a relay; this is the server itself."""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from vault_bridge_lab.lab import ADMIN_PASSWORD, PASSWORD_ENV, to_toml
from vault_bridge_lab.openbao import PkiSetup, setup_pki
from vault_bridge_lab.openbao_raft import RaftOpenBaoServer
from vault_bridge_lab.simulator import SimulatedCluster

from tests.conftest import register_secret
from tests.faults.conftest import NAMES, write_config
from tests.faults.outcome import assert_clear_failure, installed, invoke
from tests.integration.conftest import PKI_ROLES
from vault_bridge.decisions.renewal import issued_by

pytestmark = [pytest.mark.fault("vault"), pytest.mark.usefixtures("raft_env")]

DUE = "cm"


@pytest.fixture(scope="module")
def raft() -> Iterator[RaftOpenBaoServer]:
    server = RaftOpenBaoServer()
    try:
        server.start()
        register_secret(server.root_token)
        register_secret(server.unseal_key)
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def raft_pki(raft: RaftOpenBaoServer) -> PkiSetup:
    suffix = uuid.uuid4().hex[:6]
    return setup_pki(
        raft.client(),
        mount=f"pki-root-sealed-{suffix}",
        int_mount=f"pki-sealed-{suffix}",
        roles=PKI_ROLES,
    )


@pytest.fixture
def raft_env(raft: RaftOpenBaoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", raft.root_token)
    monkeypatch.setenv(PASSWORD_ENV, ADMIN_PASSWORD)


def due_config(config: str, tmp_path: Path) -> str:
    """``config`` with ``cm`` due now: it wants 8000 h of margin, its certificate has 720 h."""
    doc = tomllib.loads(Path(config).read_text())
    doc["clusters"][0]["certificates"][DUE].update(ttl="8760h", renew_before="8000h")
    path = tmp_path / "due.toml"
    path.write_text(to_toml(doc))
    return str(path)


def from_vault(pem: str, pki: PkiSetup) -> bool:
    assert pki.intermediate_pem is not None
    return issued_by(pem, [x509.load_pem_x509_certificate(pki.intermediate_pem.encode())])


def test_vault_really_sealed(
    raft: RaftOpenBaoServer, raft_pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    config = write_config(raft, raft_pki, [east], tmp_path)
    first = invoke("--config", config, "run", "--once")
    assert first.exit_code == 0, first.output
    assert all(from_vault(east.installed_pem(name), raft_pki) for name in NAMES)
    due = due_config(config, tmp_path)
    pending = invoke("--config", due, "plan", "--detailed-exitcode")
    assert pending.exit_code == 2, pending.output
    assert f"+ {DUE} on east (due)" in pending.output
    assert "proxy on east" not in pending.output
    before = installed(east, NAMES)

    raft.client().sys.seal()
    assert raft.client().sys.is_sealed()

    line = assert_clear_failure(invoke("--config", due, "run", "--once"), 1, "Vault is sealed")
    assert raft.address in line and "Vault is sealed" in line, line
    assert installed(east, NAMES) == before
    assert_clear_failure(invoke("--config", config, "issue", DUE), 1, "Vault is sealed")
    assert installed(east, NAMES) == before

    status = raft.client().sys.submit_unseal_key(raft.unseal_key)
    assert status["sealed"] is False
    raft.wait_active()

    again = invoke("--config", due, "run", "--once")
    assert again.exit_code == 0, again.output
    after = installed(east, NAMES)
    assert after[DUE] != before[DUE]
    assert after[f"{DUE} served"] != before[f"{DUE} served"]
    assert from_vault(after[DUE], raft_pki)
    assert {k: v for k, v in after.items() if not k.startswith(DUE)} == {
        k: v for k, v in before.items() if not k.startswith(DUE)
    }
    done = invoke("--config", due, "plan", "--detailed-exitcode")
    assert done.exit_code == 0, done.output
