"""Integration fixtures: one real OpenBao dev server (TLS) per session, PKI mounts per module."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from vault_bridge_lab.lab import ADMIN_PASSWORD, PASSWORD_ENV
from vault_bridge_lab.openbao import (
    DEFAULT_ROLE,
    OpenBaoError,
    OpenBaoServer,
    PkiSetup,
    find_bao,
    setup_pki,
)
from vault_bridge_lab.simulator import DatabaseWorld, SimulatedCluster

from tests.conftest import register_secret
from tests.integration.database_helpers import VERSION

# Roles every PKI fixture has on its issuing mount. ``redis`` is the default role of
# setup_pki (key type "any": sign only); Vault cannot issue with "any", so issue mode needs a
# role with a fixed key type.
PKI_ROLES: dict[str, dict[str, Any]] = {
    "redis": DEFAULT_ROLE,
    "redis-rsa": {**DEFAULT_ROLE, "key_type": "rsa", "key_bits": 2048},
    "redis-ec": {**DEFAULT_ROLE, "key_type": "ec", "key_bits": 256},
}


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBaoServer]:
    """A real OpenBao dev server with TLS, shared by the whole session."""
    try:
        find_bao()
    except OpenBaoError as exc:  # a test dependency: fail loudly, never skip
        pytest.fail(f"OpenBao is required for the integration tests: {exc}", pytrace=False)
    server = OpenBaoServer(tls=True)
    server.start()
    register_secret(server.root_token)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pki(openbao: OpenBaoServer, request: pytest.FixtureRequest) -> PkiSetup:
    """A root CA and an intermediate on mounts unique to the test module, with PKI_ROLES."""
    module = re.sub(r"[^a-z0-9]+", "-", request.module.__name__.rsplit(".", 1)[-1].lower())
    suffix = f"{module}-{uuid.uuid4().hex[:6]}"
    return setup_pki(
        openbao.client(),
        mount=f"pki-root-{suffix}",
        int_mount=f"pki-{suffix}",
        roles=PKI_ROLES,
    )


@pytest.fixture
def lab_env(openbao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's secrets, through the environment only: the Vault token and the cluster password."""
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    monkeypatch.setenv(PASSWORD_ENV, ADMIN_PASSWORD)


@pytest.fixture
def sim() -> Iterator[SimulatedCluster]:
    """A fresh simulated cluster "east" (7.22.2) on loopback."""
    with SimulatedCluster("east") as cluster:
        yield cluster


@pytest.fixture
def pair() -> Iterator[tuple[SimulatedCluster, SimulatedCluster]]:
    """Two simulated clusters, east and west, sharing one database world (Replica Of, CRDBs)."""
    world = DatabaseWorld()
    with (
        SimulatedCluster("east", software_version=VERSION, world=world) as east,
        SimulatedCluster("west", software_version=VERSION, world=world) as west,
    ):
        yield east, west
