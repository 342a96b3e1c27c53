"""The container image: built from the Dockerfile on the local Debian base, run with docker.

No registry is reachable here, so the image is built ``FROM vault-bridge-base:bookworm``
(scripts/base-image.sh bootstraps it from the Debian mirror) with ``--network host`` for pip.

Needs a running dockerd: skips with that reason when ``docker info`` fails, except under
``CI=true``, where it fails instead (CI must run it; .ci/install-docker.sh starts dockerd).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from vault_bridge_lab.lab import (
    ADMIN_PASSWORD,
    PASSWORD_ENV,
    ROTATED,
    cluster_table,
    lab_config,
    to_toml,
)
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

from tests.integration.docker_helpers import BASE_IMAGE, ensure_base_image, require_dockerd
from vault_bridge.adapters.tls_probe import verify_chain
from vault_bridge.models.certificates import CertificateInfo

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
IMAGE = "vault-bridge:test"
UID = GID = "10001"
# Local CA certificates (Debian's place for them). Here they include the egress proxy's CA
# that signs pypi.org as pip sees it; pip in the builder stage must trust it too.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")


def docker(
    *args: str, timeout: float = 60, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs the docker CLI; on failure, fails the test with the command's output."""
    proc = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"docker {' '.join(args)[:200]} exited {proc.returncode}:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}",
            pytrace=False,
        )
    return proc


def docker_run(
    *args: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``docker run --rm`` of the test image; ``args`` are run options, then the command."""
    return docker("run", "--rm", *args, timeout=timeout, check=check)


def _build_args() -> list[str]:
    """--build-arg options: base image, version labels, and how pip in the builder gets out."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    args = {"BASE_IMAGE": BASE_IMAGE, "VERSION": project["version"]}
    git = ["git", "-C", str(REPO)]
    for key, cmd in (
        ("REVISION", ["rev-parse", "HEAD"]),
        ("SOURCE_URL", ["remote", "get-url", "origin"]),
    ):
        out = subprocess.run([*git, *cmd], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            args[key] = out.stdout.strip()
    # The host's own pip index settings, when they name something a container can reach
    # (not the file:// indexes of this machine). Unset here: pip uses pypi.org.
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"):
        value = os.environ.get(key, "")
        if value and "file:" not in value:
            args[key] = value
    ca_file = os.environ.get("VAULT_BRIDGE_BUILD_CA_FILE")
    pems = [Path(ca_file)] if ca_file else sorted(LOCAL_CA_DIR.rglob("*.crt"))
    if pems:
        args["CA_CERTIFICATES"] = "".join(p.read_text() for p in pems)
    return [opt for key, value in args.items() for opt in ("--build-arg", f"{key}={value}")]


def _log(name: str, text: str) -> None:
    """Keeps a long output in the shared test log directory (scanned for secrets)."""
    log_dir = os.environ.get("VAULT_BRIDGE_TEST_LOG_DIR")
    if log_dir:
        Path(log_dir, name).write_text(text)


@pytest.fixture(scope="session")
def dockerd() -> None:
    require_dockerd()


@pytest.fixture(scope="session")
def image(dockerd: None) -> str:
    """The base image (made once, then cached) and vault-bridge:test built from the Dockerfile."""
    start = time.monotonic()
    ensure_base_image()
    print(f"base image: {time.monotonic() - start:.1f} s")

    start = time.monotonic()
    build = docker(
        "build", "--network", "host", *_build_args(), "-t", IMAGE, str(REPO), timeout=900
    )
    _log("docker-build.log", build.stdout + build.stderr)
    print(f"docker build: {time.monotonic() - start:.1f} s")
    return IMAGE


def inspect(ref: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(docker("image", "inspect", ref).stdout)
    return data[0]


# ---------------------------------------------------------------------------
# The image as built


def test_image_exists_with_its_runtime_contract(image: str) -> None:
    config = inspect(image)["Config"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert config["Labels"]["org.opencontainers.image.title"] == "vault-bridge"
    assert config["Labels"]["org.opencontainers.image.version"] == project["version"]
    assert config["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert config["User"] == f"{UID}:{GID}"
    assert config["Entrypoint"] == ["vault-bridge"]
    assert config["Cmd"] == ["--log-format", "json", "run"]
    assert set(config["Volumes"]) == {"/var/lib/vault-bridge", "/tmp"}
    assert "9109/tcp" in config["ExposedPorts"]
    assert "VAULT_BRIDGE_CONFIG=/etc/vault-bridge/config.toml" in config["Env"]
    assert any(e.startswith("PATH=/opt/vault-bridge/bin:/") for e in config["Env"])
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "/opt/vault-bridge/bin/python"]
    assert "/healthz" in config["Healthcheck"]["Test"][-1]


def test_help_runs_on_a_read_only_root_without_network(image: str) -> None:
    proc = docker_run("--read-only", "--network", "none", image, "--help")
    assert proc.returncode == 0
    assert "Usage: vault-bridge" in proc.stdout
    assert "run" in proc.stdout


@pytest.mark.parametrize("flag", ["-u", "-g"])
def test_runs_as_fixed_non_root_ids(image: str, flag: str) -> None:
    assert docker_run("--entrypoint", "id", image, flag).stdout.strip() == UID


def test_state_dir_and_tmp_are_writable_on_a_read_only_root(image: str) -> None:
    script = (
        "import os, pathlib\n"
        "for d in ('/var/lib/vault-bridge', '/tmp'):\n"
        "    p = pathlib.Path(d, 'probe'); p.write_text('x'); print(d, oct(p.stat().st_mode))\n"
        "try:\n"
        "    open('/opt/vault-bridge/probe', 'w')\n"
        "except OSError as exc:\n"
        "    print('root fs:', exc.strerror)\n"
    )
    out = docker_run("--read-only", "--entrypoint", "python", image, "-c", script).stdout
    assert "/var/lib/vault-bridge 0o100" in out
    assert "/tmp 0o100" in out
    assert "root fs: Read-only file system" in out


def test_no_compiler_pip_cache_or_build_leftovers(image: str) -> None:
    # As root, so that /root is readable; every line printed is a finding.
    script = (
        "for t in gcc cc c++ make; do command -v $t; done; "
        "for p in /root/.cache/pip /var/lib/vault-bridge/.cache /opt/vault-bridge/bin/pip "
        "/wheels /src /opt/build; do [ -e $p ] && echo $p; done; "
        "find /opt/vault-bridge -name '*.whl' -o -name build -type d; true"
    )
    out = docker_run("--user", "0", "--entrypoint", "sh", image, "-c", script).stdout
    assert out.strip() == ""


def test_image_carries_no_lab_code(image: str) -> None:
    """The runtime image has vault_bridge, and neither the lab nor the optional Docker SDK."""
    probe = (
        "import importlib.util as u; "
        "print(sorted(m for m in ('vault_bridge', 'vault_bridge_lab', 'docker') if u.find_spec(m)))"
    )
    out = docker_run("--entrypoint", "python", image, "-c", probe).stdout
    assert out.strip() == "['vault_bridge']"


def test_image_size(image: str) -> None:
    size = inspect(image)["Size"]
    base = inspect(BASE_IMAGE)["Size"]
    print(
        f"image size: {size / 1e6:.0f} MB (base {base / 1e6:.0f} MB + {(size - base) / 1e6:.0f} MB)"
    )
    # The venv alone: vault-bridge and its dependencies, no pip, no wheels, no caches.
    assert size - base < 60e6


def test_healthcheck_command_asks_healthz(image: str) -> None:
    """The image's own HEALTHCHECK command: 0 against a 200 on /healthz, non-zero without one."""
    command: Sequence[str] = inspect(image)["Config"]["Healthcheck"]["Test"][1:]
    stub = (
        "import http.server\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200 if self.path == '/healthz' else 404); self.end_headers()\n"
        "http.server.HTTPServer(('127.0.0.1', 9109), H).serve_forever()\n"
    )
    name = f"vault-bridge-health-{uuid.uuid4().hex[:8]}"
    docker(
        "run",
        "-d",
        "--rm",
        "--read-only",
        "--network",
        "none",
        "--name",
        name,
        "--entrypoint",
        "python",
        image,
        "-c",
        stub,
    )
    try:
        deadline = time.monotonic() + 15
        while docker("exec", name, *command, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the healthcheck never passed against the stub"
            time.sleep(0.2)
        moved = docker(
            "exec",
            "-e",
            "VAULT_BRIDGE_HEALTH_URL=http://127.0.0.1:9109/missing",
            name,
            *command,
            check=False,
        )
        assert moved.returncode != 0
    finally:
        docker("rm", "-f", name, check=False)


# ---------------------------------------------------------------------------
# Sidecar: the image runs `vault-bridge run` beside a cluster (host network), as in the README.


@pytest.fixture
def host_network_container(image: str) -> Iterator[list[str]]:
    """Names of containers the sidecar tests start with ``docker run -d``; removed after."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "-f", name, check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(
    condition: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; container logs:\n{logs()[-3000:]}", pytrace=False)


def test_sidecar_rotates_reports_healthy_and_stops_cleanly(
    image: str,
    host_network_container: list[str],
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path: Path,
) -> None:
    port = _free_port()
    with SimulatedCluster("east") as sim:
        conf_dir = tmp_path / "conf"
        conf_dir.mkdir()
        doc = lab_config(
            openbao,
            pki,
            [cluster_table(sim, conf_dir, role="redis")],
            state_dir=Path("/var/lib/vault-bridge"),
            defaults={"key_type": "ec", "key_bits": 256, "ttl": "720h"},
            agent={"listen": f"127.0.0.1:{port}", "log_format": "json"},
        )
        (conf_dir / "config.toml").write_text(to_toml(doc))
        for path in conf_dir.iterdir():
            path.chmod(0o644)  # readable by the container's non-root user
        conf_dir.chmod(0o755)
        tmp_path.chmod(0o755)
        assert openbao.ca_cert
        name = f"vault-bridge-sidecar-{uuid.uuid4().hex[:8]}"
        host_network_container.append(name)
        # Secrets reach the container through the environment of this docker CLI process:
        # `-e NAME` without a value, so they are never on a command line.
        env = dict(os.environ, VAULT_TOKEN=openbao.root_token, **{PASSWORD_ENV: ADMIN_PASSWORD})
        run = subprocess.run(
            [
                "docker", "run", "-d", "--name", name,
                "--network", "host", "--read-only",
                "-v", f"{conf_dir}:{conf_dir}:ro",
                "-v", f"{openbao.ca_cert}:{openbao.ca_cert}:ro",
                "-e", f"VAULT_BRIDGE_CONFIG={conf_dir}/config.toml",
                "-e", "VAULT_TOKEN", "-e", PASSWORD_ENV,
                "-e", f"VAULT_BRIDGE_HEALTH_URL=http://127.0.0.1:{port}/healthz",
                "--health-interval", "2s", "--health-start-period", "1s",
                image,
            ],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr

        def logs() -> str:
            out = docker("logs", name, check=False)
            return out.stdout + out.stderr

        vault_issuer = CertificateInfo.from_pem(pki.intermediate_pem or "").subject

        def rotated() -> bool:
            return all(
                CertificateInfo.from_pem(sim.installed_pem(n)).issuer == vault_issuer
                for n in ROTATED
            )

        try:
            _wait(rotated, 60, "the five certificates to be installed", logs)
            for n in ("api", "cm", "metrics_exporter", "proxy"):
                verify_chain(sim.endpoint(n), pki.root_pem)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                assert resp.status == 200

            def healthy() -> bool:
                state = json.loads(docker("inspect", name).stdout)[0]["State"]
                return bool(state.get("Health", {}).get("Status") == "healthy")

            _wait(healthy, 60, "docker health to turn healthy", logs)
            status = docker("exec", name, "cat", "/proc/1/status").stdout
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:] == [UID] * 4  # real, effective, saved, fs: not root
            started = time.monotonic()
            docker("stop", "-t", "30", name, timeout=60)
            stop_seconds = time.monotonic() - started
            state = json.loads(docker("inspect", name).stdout)[0]["State"]
            assert state["ExitCode"] == 0, logs()[-3000:]
            assert stop_seconds < 25
            print(f"sidecar: docker stop took {stop_seconds:.1f} s, exit code 0")
        finally:
            _log(f"{name}.log", logs())
        lines = [line for line in logs().splitlines() if line.startswith("{")]
        assert lines and all(json.loads(line)["level"] for line in lines)  # JSON logs
