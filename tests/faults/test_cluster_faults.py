"""The cluster as a hostile network would answer: each fault gives a clear line and the right
exit code, leaves the old certificates served, prints nothing secret, and the next run recovers."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

from tests.faults.conftest import NAMES, write_config
from tests.faults.outcome import assert_clear_failure, installed, invoke

pytestmark = [pytest.mark.fault("cluster"), pytest.mark.usefixtures("lab_env")]

BULK = "/v1/cluster/certificates"
MALFORMED: list[tuple[str, Any]] = [
    ("truncated", b'{"api_cert": "-----BEGIN CERTIFICATE-----\\nMIIB'),
    ("html", b"<html><body>502 Bad Gateway</body></html>"),
    ("empty object", {}),
    ("fields missing", {"status": "ok"}),
    ("a list", [1, 2, 3]),
    ("wrong types", {"api_cert": 1, "cm_cert": [], "proxy_cert": {}, "syncer_cert": True}),
    ("garbage PEM", "garbage"),
]


def garbage_pems(sim: SimulatedCluster) -> dict[str, str]:
    body = {f"{n}_cert": sim.installed_pem(n) for n in ("api", "cm", "proxy", "syncer")}
    body["proxy_cert"] = (
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    return body


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_fault_then_recover(
    config: str, sim: SimulatedCluster, code: int, *needles: str, clear: Any = None
) -> None:
    before = installed(sim, NAMES)
    ran = invoke("--config", config, "run", "--once")
    assert_clear_failure(ran, code, *needles)
    assert installed(sim, NAMES) == before  # the old certificates are still in place
    (clear or sim._faults.clear)()
    again = invoke("--config", config, "run", "--once")
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize(("what", "body"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_certificate_list(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    what: str,
    body: Any,
) -> None:
    if body == "garbage":
        body = garbage_pems(east)
    east.inject_fault("GET", BULK, 200, times=100, body=body)
    config = write_config(openbao, pki, [east], tmp_path)
    run_fault_then_recover(config, east, 1, "malformed answer")


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/nodes", {"nodes": []}), ("/v1/nodes", b"not json"), ("/v1/nodes", [{"uid": "x"}])],
)
def test_malformed_nodes(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    path: str,
    body: Any,
) -> None:
    east.inject_fault("GET", path, 200, times=100, body=body)
    config = write_config(openbao, pki, [east], tmp_path)
    run_fault_then_recover(config, east, 1, "malformed answer")


@pytest.mark.parametrize(
    ("status", "needle"),
    [
        (401, "wrong username or password"),
        (403, "HTTP 403"),
        (500, "internal error"),
        (503, "not answering"),
    ],
)
def test_install_refused(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    status: int,
    needle: str,
) -> None:
    east.inject_fault("PUT", BULK, status, times=100)
    config = write_config(openbao, pki, [east], tmp_path)
    run_fault_then_recover(config, east, 1, needle)


def test_409_then_ok(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    east.inject_fault("PUT", BULK, 409, times=1)
    config = write_config(openbao, pki, [east], tmp_path)
    ran = invoke("--config", config, "run", "--once")
    assert ran.exit_code == 0, ran.output


def test_5xx_burst_on_reads_is_retried(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    east.inject_fault("GET", BULK, 503, times=2)
    east.inject_fault("GET", "/v1/nodes", 500, times=2)
    config = write_config(openbao, pki, [east], tmp_path)
    ran = invoke("--config", config, "run", "--once")
    assert ran.exit_code == 0, ran.output


def test_refusing_connections(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    config = write_config(openbao, pki, [east], tmp_path)
    text = Path(config).read_text()
    port = east.api_url.rsplit(":", 1)[1]
    Path(config).write_text(text.replace(f':{port}"', f':{closed_port()}"', 1))
    ran = invoke("--config", config, "run", "--once")
    assert_clear_failure(ran, 1, "cannot reach the cluster")
    Path(config).write_text(text)
    assert invoke("--config", config, "run", "--once").exit_code == 0


def test_slow_past_the_timeout(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    east.inject_fault("GET", BULK, 0, times=4, delay=1.5)
    config = write_config(openbao, pki, [east], tmp_path, timeout=0.5)
    run_fault_then_recover(config, east, 1, "no answer within 0.5s")


def test_200_without_applying_the_install(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    """The cluster says 200 and installs nothing: the read-back catches it, nothing is
    revoked that might be in use, and the next run installs for real."""
    east.inject_fault("PUT", BULK, 200, times=1, body={})
    config = write_config(openbao, pki, [east], tmp_path)
    run_fault_then_recover(
        config, east, 1, "the cluster reports a different certificate", clear=lambda: None
    )
