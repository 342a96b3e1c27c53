"""The container image: built from the Dockerfile on the local Debian base, run with docker.

No registry is reachable here, so the image is built ``FROM vault-bridge-base:bookworm``
(scripts/base-image.sh bootstraps it from the Debian mirror) with ``--network host`` for pip.

Needs a running dockerd: skips with that reason when ``docker info`` fails, except under
``CI=true``, where it fails instead (CI must run it; .ci/install-docker.sh starts dockerd).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
IMAGE = "vault-bridge:test"
BASE_IMAGE = "vault-bridge-base:bookworm"
UID = GID = "10001"
NO_DOCKER = "dockerd not running: run .ci/install-docker.sh"
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


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


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
    if not _docker_answers():
        if _ci():
            pytest.fail(f"{NO_DOCKER} (CI=true: the container tests must run)", pytrace=False)
        pytest.skip(NO_DOCKER)


@pytest.fixture(scope="session")
def image(dockerd: None) -> str:
    """The base image (made once, then cached) and vault-bridge:test built from the Dockerfile."""
    start = time.monotonic()
    base = subprocess.run(
        [str(REPO / "scripts" / "base-image.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if base.returncode != 0:
        pytest.fail(f"scripts/base-image.sh failed:\n{base.stderr[-3000:]}", pytrace=False)
    print(f"base image: {time.monotonic() - start:.1f} s ({base.stderr.strip().splitlines()[-1]})")

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
    assert config["Cmd"] == ["run", "--log-format", "json"]
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
# Sidecar (next): `vault-bridge run` in the container with a config against OpenBao and a
# simulated cluster, all on the host network. The pieces to use:
#   - the `openbao` and `pki` fixtures of tests/integration/conftest.py,
#   - vault_bridge.testing.simulator.SimulatedCluster and vault_bridge.testing.lab,
#   - docker_run("--network", "host", "--read-only", "-v", f"{cfg}:/etc/vault-bridge/config.toml:ro",
#     image, "run", "--once", ...) or `docker run -d` + the HEALTHCHECK for the long-running agent.


@pytest.fixture
def host_network_container(image: str) -> Iterator[list[str]]:
    """Names of containers the sidecar tests start with ``docker run -d``; removed after."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "-f", name, check=False)
