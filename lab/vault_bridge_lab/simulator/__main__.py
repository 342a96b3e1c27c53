"""``python -m vault_bridge_lab.simulator``: one simulated cluster until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
from types import FrameType

from vault_bridge_lab.simulator.cluster import SimulatedCluster
from vault_bridge_lab.simulator.names import LISTENERS
from vault_bridge_lab.simulator.rest import DEFAULT_USERS


def main(argv: list[str] | None = None) -> int:
    """Run one simulated cluster until SIGTERM or SIGINT; print where it listens as JSON."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # First thing: a signal sent while starting up still ends the run cleanly.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parser = argparse.ArgumentParser(
        prog="python -m vault_bridge_lab.simulator",
        description="Run a simulated Redis Enterprise Software cluster on loopback.",
    )
    parser.add_argument("--name", default="sim", help="cluster name (default: sim)")
    parser.add_argument("--version", default="7.22.2-14", help="software version of every node")
    parser.add_argument(
        "--node-version",
        action="append",
        metavar="VERSION",
        help="version of one node (repeat per node; overrides --version per node)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    for flag, listener in (
        ("--port-api", "api"),
        ("--port-cm", "cm"),
        ("--port-metrics", "metrics_exporter"),
        ("--port-proxy", "proxy"),
    ):
        parser.add_argument(flag, type=int, default=0, help=f"{listener} port (0: a free one)")
    parser.add_argument("--admin-user", default="admin@example.com")
    parser.add_argument("--admin-password-file", help="file holding the admin password")
    parser.add_argument("--api-ca-out", help="write the initial api certificate PEM here")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
    )

    admin_password = "admin-password"
    if args.admin_password_file:
        with open(args.admin_password_file, encoding="utf-8") as handle:
            admin_password = handle.read().rstrip("\r\n")
        if not admin_password:
            parser.error(f"{args.admin_password_file} is empty")
    users = {args.admin_user: (admin_password, "admin")}
    users.update({u: v for u, v in DEFAULT_USERS.items() if v[1] != "admin"})
    ports = {
        "api": args.port_api,
        "cm": args.port_cm,
        "metrics_exporter": args.port_metrics,
        "proxy": args.port_proxy,
    }
    try:
        cluster = SimulatedCluster(
            args.name,
            software_version=args.version,
            node_versions=args.node_version,
            users=users,
            host=args.host,
            ports=ports,
        )
    except ValueError as exc:
        parser.error(str(exc))

    with tempfile.TemporaryDirectory(prefix="vault-bridge-sim-") as scratch, cluster:
        ca_path = os.path.abspath(args.api_ca_out or os.path.join(scratch, "api-ca.pem"))
        partial_path = f"{ca_path}.{secrets.token_hex(4)}.tmp"
        with open(partial_path, "w", encoding="utf-8") as handle:
            handle.write(cluster.api_ca_pem())
        os.replace(partial_path, ca_path)
        print(
            json.dumps(
                {
                    "name": cluster.name,
                    "software_version": cluster.software_version,
                    "api_url": cluster.api_url,
                    "endpoints": {listener: cluster.endpoint(listener) for listener in LISTENERS},
                    "api_ca_file": ca_path,
                    "admin_user": args.admin_user,
                }
            ),
            flush=True,
        )
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
