"""Fixtures of the fault suite: the integration suite's OpenBao server and PKI, a simulated
cluster, a fault-injecting relay in front of Vault, and a CLI runner that checks the outcome
users care about."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vault_bridge_lab.lab import VaultServer, cluster_table, lab_config, to_toml
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

from tests.faults.vault_relay import VaultRelay
from tests.integration.conftest import lab_env, openbao, pki  # noqa: F401  (fixtures)

NAMES = ("cm", "proxy", "syncer")


@pytest.fixture
def east() -> Iterator[SimulatedCluster]:
    with SimulatedCluster("east") as sim:
        yield sim


@pytest.fixture
def relay(openbao: OpenBaoServer) -> Iterator[VaultRelay]:  # noqa: F811
    with VaultRelay(openbao.address, openbao.ca_cert) as running:
        yield running


def write_config(
    openbao: VaultServer,  # noqa: F811
    pki: PkiSetup,  # noqa: F811
    sims: list[SimulatedCluster],
    tmp_path: Path,
    *,
    names: tuple[str, ...] = NAMES,
    vault: dict[str, Any] | None = None,
    **cluster: Any,
) -> str:
    doc = lab_config(
        openbao,
        pki,
        [cluster_table(s, tmp_path, role="redis", names=names, **cluster) for s in sims],
        state_dir=tmp_path / "state",
        defaults={"key_type": "ec", "key_bits": 256, "ttl": "720h"},
    )
    doc["vault"].update(vault or {})
    for key in [k for k, v in doc["vault"].items() if v is None]:
        del doc["vault"][key]
    path = tmp_path / "config.toml"
    path.write_text(to_toml(doc))
    return str(path)
