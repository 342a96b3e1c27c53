"""Docker for the integration tests: is dockerd there (skip, or fail under ``CI=true``), and the
small crdb-cli image the docker runner executes in.

No registry is reachable, so images are built ``FROM vault-bridge-base:bookworm``, which
``scripts/base-image.sh`` makes with debootstrap + ``docker import`` (``.ci/install-docker.sh``
starts dockerd in CI). The crdb-cli image only adds the stand-in
(``lab/vault_bridge_lab/crdb_cli.py``, standard library only) as ``/opt/redislabs/bin/crdb-cli``,
where a Redis Enterprise node has the real one; it is built through the Docker Engine API.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "vault-bridge-base:bookworm"
CRDB_CLI_IMAGE = "vault-bridge-crdb-cli:test"
CRDB_CLI_IN_IMAGE = "/opt/redislabs/bin/crdb-cli"
NO_DOCKER = "dockerd not running: run .ci/install-docker.sh"


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def require_dockerd() -> None:
    """Skip with the reason when dockerd does not answer; under ``CI=true`` fail instead."""
    if not docker_answers():
        if ci():
            pytest.fail(f"{NO_DOCKER} (CI=true: the docker tests must run)", pytrace=False)
        pytest.skip(NO_DOCKER)


def ensure_base_image() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "base-image.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/base-image.sh failed:\n{done.stderr[-3000:]}", pytrace=False)


def _context() -> bytes:
    dockerfile = (
        f"FROM {BASE_IMAGE}\n"
        f"COPY crdb-cli {CRDB_CLI_IN_IMAGE}\n"
        'LABEL org.opencontainers.image.title="vault-bridge crdb-cli stand-in (tests)"\n'
        'CMD ["sleep", "infinity"]\n'
    )
    script = (REPO / "lab" / "vault_bridge_lab" / "crdb_cli.py").read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, mode in (
            ("Dockerfile", dockerfile.encode(), 0o644),
            ("crdb-cli", script, 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def crdb_cli_image(client: Any) -> str:
    """Build (or rebuild from cache: seconds) the crdb-cli image; returns its tag."""
    ensure_base_image()
    client.images.build(
        fileobj=io.BytesIO(_context()),
        custom_context=True,
        tag=CRDB_CLI_IMAGE,
        rm=True,
        forcerm=True,
        network_mode="none",
    )
    return CRDB_CLI_IMAGE


@contextlib.contextmanager
def crdb_cli_container(environment: Mapping[str, str]) -> Iterator[str]:
    """A running crdb-cli container on the host network (it reaches loopback services);
    yields its name, removes it after."""
    require_dockerd()
    import docker

    client = docker.from_env()
    try:
        image = crdb_cli_image(client)
        name = f"vault-bridge-crdb-cli-{uuid.uuid4().hex[:8]}"
        container = client.containers.run(
            image,
            name=name,
            detach=True,
            network_mode="host",
            environment=dict(environment),
            read_only=True,
        )
        try:
            yield name
        finally:
            container.remove(force=True)
    finally:
        client.close()
