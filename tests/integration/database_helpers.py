"""What the database-certificate tests share: the software version of their clusters and the
configuration of an east cluster whose database ``orders`` has a certificate of its own, with
a west cluster beside it. Their fixture ``pair`` is in the integration conftest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vault_bridge_lab.lab import cluster_table, lab_config
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

# New enough for a database's own certificate.
VERSION = "8.2.0-25"


def database_doc(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    west: SimulatedCluster,
    tmp: Path,
    endpoint: str,
    **agent: Any,
) -> dict[str, Any]:
    """The configuration document: east's proxy and its database ``orders`` (probed on
    ``endpoint``), west's syncer; EC keys, the state in ``tmp/state``, ``agent`` settings."""
    database = {
        "role": "redis",
        "common_name": "orders.east.example.com",
        "alt_names": ["localhost"],
        "ip_sans": ["127.0.0.1"],
        "verify_endpoint": endpoint,
    }
    return lab_config(
        openbao,
        pki,
        [
            cluster_table(
                east, tmp, role="redis", names=("proxy",), databases={"orders": database}
            ),
            cluster_table(west, tmp, role="redis", names=("syncer",)),
        ],
        state_dir=tmp / "state",
        defaults={"key_type": "ec", "key_bits": 256},
        agent=agent,
    )
