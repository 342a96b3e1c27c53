#!/usr/bin/env python3
"""How long Active-Active sync stays broken after a proxy install: vault_bridge vs a script.

Prints the step 1 -> step 2 window for 1, 10 and 50 CRDBs, median and p95 over N runs:

- ``sent``: from the install request's 200 to the last ``POST /v1/crdbs/<guid>/updates`` sent
  (measured by the client right before sending), and ``arrived``: to the last one *received*
  by the cluster (the simulator's own arrival time; both processes read the same
  CLOCK_MONOTONIC);
- ``finished``: to the last update task seen ``finished``.

Side by side, in the same run, a baseline: one update at a time, each polled until finished
before the next is sent, as a person or a naive script does it (given the GUIDs up front, so
its discovery costs it nothing). vault_bridge prepares before the install (discovery, in-flight
check, the lock, one armed thread and a warm connection per CRDB) and fires at the 200.

The simulated cluster runs in a child process (a real cluster is another machine: the client
should not share its interpreter). Not a test; nothing is asserted.

    .venv/bin/python benchmarks/followup_window.py [--runs 15] [--sizes 1,10,50]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PASSWORD_ENV = "FOLLOWUP_BENCH_PASSWORD"


# -- the cluster process ----------------------------------------------------------------------


def serve(queued: float, run: float) -> int:
    """Child process: one simulated cluster; JSON commands on stdin, answers on stdout."""
    from vault_bridge_lab.simulator import DatabaseWorld, SimulatedCluster

    world = DatabaseWorld(queued_time=queued, run_time=run)
    with tempfile.TemporaryDirectory() as tmp, SimulatedCluster("east", world=world) as sim:
        ca = Path(tmp, "api-ca.pem")
        ca.write_text(sim.api_ca_pem())
        print(json.dumps({"url": sim.api_url, "ca_file": str(ca)}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            answer: dict[str, Any] = {}
            if command["cmd"] == "crdbs":
                answer["guids"] = [sim.add_crdb(f"db{i}") for i in range(command["count"])]
            elif command["cmd"] == "posts":
                answer["times"] = [
                    r.at
                    for r in sim.requests
                    if r.method == "POST"
                    and r.at >= command["since"]
                    and r.path.endswith("/updates")
                ]
                answer["rejecting"] = world.rejecting()
            print(json.dumps(answer), flush=True)
    return 0


class ClusterProcess:
    def __init__(self, queued: float, run: float) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                "--task-queued",
                str(queued),
                "--task-run",
                str(run),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


# -- certificates -----------------------------------------------------------------------------


def make_issuer() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def proxy_cert(issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> tuple[str, str]:
    ca, ca_key = issuer
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy.bench")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


# -- one measured rotation --------------------------------------------------------------------


def settings_for(cluster: ClusterProcess, state_dir: str) -> Any:
    from vault_bridge.config.loading import parse_config

    return parse_config(
        {
            "vault": {"address": "http://127.0.0.1:1"},
            "agent": {"state_dir": state_dir},
            "clusters": [
                {
                    "name": "east",
                    "url": cluster.info["url"],
                    "username": "admin@example.com",
                    "password_env": PASSWORD_ENV,
                    "ca_file": cluster.info["ca_file"],
                }
            ],
        }
    )


Result = dict[str, float]


def vault_bridge_run(
    followups: Any, client: Any, cluster: ClusterProcess, cert: tuple[str, str]
) -> Result:
    from vault_bridge.decisions.install import CertUpload
    from vault_bridge.models.certificates import CertChange

    old = client.certificates()["proxy"].pem
    change = CertChange("east", "proxy", cert[0], old)
    with followups.window(["east"], [change]) as window:
        assert not window.refused, window.refused
        client.put_certificates([CertUpload("proxy", cert[0], cert[1])])
        at_200 = time.monotonic()
        window.installed("east", ["proxy"])
        failed = window.finish([change])
    assert not failed, failed
    window = followups.last_windows["east"]
    return {"sent": window["request_sent"], "finished": window["finished"], "at_200": at_200}


def sequential_run(runner: Any, client: Any, guids: Sequence[str], cert: tuple[str, str]) -> Result:
    """The baseline: after the 200, one ``crdb update`` at a time, each waited for."""
    from vault_bridge.decisions.install import CertUpload

    client.put_certificates([CertUpload("proxy", cert[0], cert[1])])
    at_200 = time.monotonic()
    sent = 0.0
    for guid in guids:
        stamp: list[float] = []
        runner.update(guid, on_sent=lambda stamp=stamp: stamp.append(time.monotonic()))
        sent = stamp[0]
    return {"sent": sent - at_200, "finished": time.monotonic() - at_200, "at_200": at_200}


def measure(
    size: int, runs: int, cluster: ClusterProcess, state_dir: str, issuer: Any
) -> dict[str, list[Result]]:
    from vault_bridge.adapters.crdb_runners import RestRunner
    from vault_bridge.adapters.redis_enterprise import ClusterClient
    from vault_bridge.rotation.followups import FollowUps

    settings = settings_for(cluster, state_dir)
    guids = cluster.ask(cmd="crdbs", count=size)["guids"]
    out: dict[str, list[Result]] = {"vault_bridge": [], "sequential": []}
    with (
        ClusterClient(settings.cluster("east")) as fb_client,
        ClusterClient(settings.cluster("east")) as seq_client,
    ):
        followups = FollowUps(settings, {"east": fb_client})
        runner = RestRunner(seq_client)
        methods: dict[str, Callable[[tuple[str, str]], Result]] = {
            "vault_bridge": lambda cert: vault_bridge_run(followups, fb_client, cluster, cert),
            "sequential": lambda cert: sequential_run(runner, seq_client, guids, cert),
        }
        for run in range(runs + 1):  # the first run of each warms up and is dropped
            for name, method in methods.items():
                result = method(proxy_cert(issuer))
                arrived = cluster.ask(cmd="posts", since=result["at_200"])
                assert not arrived["rejecting"], arrived["rejecting"]
                result["arrived"] = max(arrived["times"]) - result["at_200"]
                if run:
                    out[name].append(result)
        followups.close()
    return out


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered) + 0.5) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--task-queued", type=float, default=0.005, help="seconds queued")
    parser.add_argument("--task-run", type=float, default=0.05, help="seconds started")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.task_queued, args.task_run)
    logging.basicConfig(level=logging.ERROR)
    os.environ[PASSWORD_ENV] = "admin-password"  # the simulator's default admin password
    issuer = make_issuer()
    print(
        f"step 1 -> step 2 window, loopback, {args.runs} runs per row, simulated tasks "
        f"{args.task_queued * 1000:g} ms queued + {args.task_run * 1000:g} ms started, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    header = (
        f"{'CRDBs':>5}  {'method':<13}"
        f"{'sent median':>12}{'p95':>9}{'arrived median':>16}{'p95':>9}"
        f"{'finished median':>17}{'p95':>9}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as state_dir:
        for size in (int(s) for s in args.sizes.split(",")):
            cluster = ClusterProcess(args.task_queued, args.task_run)
            try:
                results = measure(size, args.runs, cluster, state_dir, issuer)
            finally:
                cluster.close()
            for name, rows in results.items():
                cells = []
                for key in ("sent", "arrived", "finished"):
                    values = [r[key] * 1000 for r in rows]
                    cells.append(
                        f"{statistics.median(values):>{12 if key == 'sent' else 16 if key == 'arrived' else 17}.1f}"
                    )
                    cells.append(f"{p95(values):>9.1f}")
                print(f"{size:>5}  {name:<13}{''.join(cells)}")
    print("(milliseconds from the install request's 200)")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
