"""The CLI contract, through click's CliRunner against OpenBao and a simulated cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from vault_bridge_lab.lab import (
    cluster_table,
    lab_config,
    to_toml,
)
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

from vault_bridge.cli.main import cli

pytestmark = pytest.mark.usefixtures("lab_env")


def write_config(
    openbao: OpenBaoServer, pki: PkiSetup, sims: list[SimulatedCluster], tmp_path: Path, **kw: Any
) -> Path:
    names = kw.pop("names", ("cm", "api", "proxy", "syncer", "metrics_exporter"))
    role = kw.pop("role", "redis")
    doc = lab_config(
        openbao,
        pki,
        [cluster_table(s, tmp_path, role=role, names=names) for s in sims],
        state_dir=tmp_path / "state",
        defaults={"key_type": "ec", "key_bits": 256, **kw.pop("defaults", {})},
    )
    path = tmp_path / "config.toml"
    path.write_text(to_toml(doc))
    return path


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    # echoed so the suite-wide secret scan sees every line the CLI printed
    print(result.output)
    return result


def test_run_once_status_plan_issue(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    config = str(write_config(openbao, pki, [sim], tmp_path))

    planned = invoke("--config", config, "plan", "--detailed-exitcode")
    assert planned.exit_code == 2
    assert "5 certificate(s) would be issued" in planned.output
    assert sim.install_count == 0  # plan changes nothing

    status = invoke("--config", config, "status", "--json")
    assert status.exit_code == 0
    rows = json.loads(status.stdout)
    assert {r["state"] for r in rows} == {"foreign"}
    assert set(rows[0]) == {
        "cluster",
        "name",
        "serial",
        "issuer",
        "not_after",
        "renew_at",
        "state",
        "window",
        "signed_by",
        "warnings",
        "last_error",
        "next_attempt",
        "leader",
        "lease_expires",
    }

    ran = invoke("--config", config, "run", "--once")
    assert ran.exit_code == 0, ran.output
    assert ran.stdout.count("installed ") == 5

    status = invoke("--config", config, "status", "--json")
    rows = json.loads(status.stdout)
    assert {r["state"] for r in rows} == {"ok"}
    assert all(r["not_after"].endswith("Z") and r["renew_at"] < r["not_after"] for r in rows)
    proxy_serial = next(r["serial"] for r in rows if r["name"] == "proxy")

    table = invoke("--config", config, "status")
    assert table.stdout.splitlines()[0].split() == [
        "CLUSTER",
        "NAME",
        "STATE",
        "SERIAL",
        "ISSUER",
        "NOT",
        "AFTER",
        "RENEW",
        "AT",
    ]

    planned = invoke("--config", config, "plan", "--detailed-exitcode")
    assert planned.exit_code == 0
    assert "Nothing to do" in planned.output

    installs = sim.install_count
    again = invoke("--config", config, "run", "--once")
    assert again.exit_code == 0
    assert sim.install_count == installs  # a second pass issues nothing

    forced = invoke("--config", config, "issue", "proxy")
    assert forced.exit_code == 0, forced.output
    assert sim.install_count == installs + 1
    rows = json.loads(invoke("--config", config, "status", "--json").stdout)
    assert next(r["serial"] for r in rows if r["name"] == "proxy") != proxy_serial

    everything = invoke("--config", config, "issue", "--all", "--cluster", "east")
    assert everything.exit_code == 0
    assert sim.install_count == installs + 6


def test_issue_errors(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    config = str(write_config(openbao, pki, [sim], tmp_path, names=("proxy",)))
    unknown = invoke("--config", config, "issue", "cm")
    assert unknown.exit_code == 2
    assert "not configured" in unknown.output
    neither = invoke("--config", config, "issue")
    assert neither.exit_code == 2
    bad_cluster = invoke("--config", config, "issue", "proxy", "--cluster", "eats")
    assert bad_cluster.exit_code == 2
    assert "unknown cluster 'eats' (did you mean 'east'?)" in bad_cluster.output


def test_run_once_exit_1_when_one_fails(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    config = str(write_config(openbao, pki, [sim], tmp_path, names=("proxy", "cm")))
    sim.inject_fault(
        "PUT",
        "/v1/cluster/certificates",
        400,
        times=3,
        body={"error_code": "x", "description": "bad"},
    )
    result = invoke("--config", config, "run", "--once")
    assert result.exit_code == 1
    assert "certificates failed" in result.output
    assert "Traceback" not in result.output


def test_validate_and_connect(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    config = str(write_config(openbao, pki, [sim], tmp_path))
    offline = invoke("--config", config, "validate")
    assert offline.exit_code == 0
    assert "1 cluster(s), 5 certificate(s)" in offline.output
    online = invoke("--config", config, "validate", "--connect")
    assert online.exit_code == 0, online.output
    assert sim.install_count == 0


def test_validate_connect_catches_role_without_client_flag(
    openbao: OpenBaoServer, pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    client = openbao.client()
    client.write(
        f"{pki.issuing_mount}/roles/no-client",
        allow_any_name=True,
        server_flag=True,
        client_flag=False,
        key_type="any",
    )
    config = str(write_config(openbao, pki, [sim], tmp_path, role="no-client", names=("proxy",)))
    result = invoke("--config", config, "validate", "--connect")
    assert result.exit_code == 1
    assert "client_flag false" in result.output
    missing = str(
        write_config(openbao, pki, [sim], tmp_path, role="does-not-exist", names=("proxy",))
    )
    result = invoke("--config", missing, "validate", "--connect")
    assert result.exit_code == 1
    assert "does-not-exist" in result.output
    assert sim.install_count == 0


def test_bad_config_exit_2_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[vault]\naddress = "https://v:8200"\n[[clusters]]\nname = "e"\nurl = "https://e:9443"\nusername = "u"\npassword_env = "X"\n[clusters.certificates.prxy]\nrole = "r"\ncommon_name = "c"\n'
    )
    result = invoke("--config", str(path), "validate")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [
        "error: clusters[0].certificates.prxy: unknown certificate name (did you mean 'proxy'?); expected one of cm, api, proxy, syncer, metrics_exporter, ldap_client, ccs_internode_encryption, data_internode_encryption"
    ]


def test_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_BRIDGE_CONFIG", str(tmp_path / "nope.toml"))
    result = invoke("validate")
    assert result.exit_code == 2
    assert "nope.toml" in result.output


def test_python_m_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vault_bridge", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for command in ("run", "issue", "status", "plan", "validate", "demo"):
        assert command in done.stdout


def test_demo_runs_and_leaves_nothing_running() -> None:
    """`vault-bridge demo`, as the README's first command runs it."""

    def bao_processes() -> set[str]:
        out = subprocess.run(
            ["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True
        )
        return {line.split()[0] for line in out.stdout.splitlines() if "bao server -dev" in line}

    before = bao_processes()
    done = subprocess.run(
        [sys.executable, "-m", "vault_bridge", "demo"], capture_output=True, text=True, timeout=120
    )
    print(done.stdout, done.stderr)  # for the secret scan
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Demo passed" in done.stdout
    assert done.stdout.count(" verified, serial ") == 4
    after_table = done.stdout.split("After one pass:")[1]
    assert after_table.count(" ok ") == 5
    assert bao_processes() <= before
