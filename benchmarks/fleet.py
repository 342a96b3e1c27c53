#!/usr/bin/env python3
"""vault_bridge at fleet scale, side by side with the straight-line baseline, in one run.

Starts a real OpenBao dev server and simulated clusters (in a child process: a real cluster is
another machine), then measures, as whole processes, interleaved (vault_bridge, baseline,
vault_bridge, ...), medians and p95 over the repeats:

- one cluster, 5 certificates (cm, api, proxy, syncer, metrics_exporter): RSA 2048 and EC
  P-256, ``sign`` and ``issue`` mode: ``vault-bridge issue --all`` against
  ``benchmarks/baseline.py``;
- 1, 10 and 100 clusters x 5, RSA, at concurrency 1 and the default, against the baseline
  on 1 and 8 threads; the time per certificate;
- REST requests per cluster of a full rotation (counted by the simulated clusters);
- start-up: ``vault-bridge --help`` and ``status`` (one cluster), and the bare interpreter;
- the idle agent (``vault-bridge run``, every certificate valid): RSS and CPU seconds per idle
  minute, for 5 and 500 certificates;
- the Active-Active follow-up window for 10 CRDBs (``benchmarks/followup_window.py``).

Not a test: nothing is asserted; a failed run is reported and the benchmark goes on.

    .venv/bin/python benchmarks/fleet.py [--repeats 7] [--fleet-repeats 3] [--sizes 1,10,100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
VB = [PYTHON, "-m", "vault_bridge"]
NAMES = ("cm", "api", "proxy", "syncer", "metrics_exporter")
DEFAULT_CONCURRENCY = 8


# -- the clusters' process --------------------------------------------------------------------


def serve(count: int, ca_dir: str) -> int:
    """Child process: ``count`` simulated clusters; JSON commands on stdin, answers on stdout."""
    import logging

    from vault_bridge_lab.lab import cluster_table
    from vault_bridge_lab.simulator import SimulatedCluster

    logging.disable(logging.WARNING)
    sims = [SimulatedCluster(f"c{i:03}") for i in range(count)]
    for sim in sims:
        sim.start()
    try:
        tables = [cluster_table(s, Path(ca_dir), role="redis", names=NAMES) for s in sims]
        print(json.dumps({"tables": tables}), flush=True)
        marks = {s.name: 0 for s in sims}
        for line in sys.stdin:
            command = json.loads(line)
            answer: dict[str, Any] = {}
            if command["cmd"] == "mark":
                marks = {s.name: len(s.requests) for s in sims}
            elif command["cmd"] == "requests":
                answer["by_cluster"] = {
                    s.name: [f"{r.method} {r.path}" for r in s.requests[marks[s.name] :]]
                    for s in sims
                }
            print(json.dumps(answer), flush=True)
    finally:
        for sim in sims:
            sim.stop()
    return 0


class Clusters:
    def __init__(self, count: int, ca_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, __file__, "--serve", str(count), "--ca-dir", str(ca_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.tables: list[dict[str, Any]] = json.loads(self.proc.stdout.readline())["tables"]

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


# -- measuring ---------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fmt(values: Sequence[float], unit: str = "s") -> str:
    if not values:
        return "failed"
    med, p95 = statistics.median(values), pct(values, 0.95)
    if unit == "ms":
        return f"{med * 1000:.1f} ms (p95 {p95 * 1000:.1f})"
    return f"{med:.2f} s (p95 {p95:.2f})"


def ratio(ours: Sequence[float], base: Sequence[float]) -> str:
    if not ours or not base:
        return "-"
    return f"{statistics.median(ours) / statistics.median(base):.2f}x"


def timed(cmd: Sequence[str], env: dict[str, str]) -> float | None:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"  ! {' '.join(cmd[2:6])}... exit {proc.returncode}: {tail}", file=sys.stderr)
        return None
    return took


class Lab:
    """OpenBao, the clusters' process and configuration files for one fleet size."""

    def __init__(self, vault: Any, pki: Any, clusters: Clusters, work: Path) -> None:
        self.vault, self.pki, self.clusters, self.work = vault, pki, clusters, work
        self.env = {
            **os.environ,
            "VAULT_TOKEN": vault.root_token,
            "VAULT_BRIDGE_LAB_RE_PASSWORD": "admin-password",
        }
        self.runs = 0

    def config(self, *, count: int, defaults: dict[str, Any], **agent: Any) -> Path:
        from vault_bridge_lab.lab import lab_config, to_toml

        self.runs += 1
        state = self.work / f"state-{self.runs}"
        tables = self.clusters.tables[:count]
        if defaults.get("mode") == "issue":  # Vault makes the key: a role of that key type
            role = f"redis-{defaults['key_type']}"
            tables = [
                {
                    **t,
                    "certificates": {n: {**c, "role": role} for n, c in t["certificates"].items()},
                }
                for t in tables
            ]
        doc = lab_config(
            self.vault,
            self.pki,
            tables,
            state_dir=state,
            defaults=defaults,
            agent={"max_issues_per_hour": 100000, "revoke_superseded": False, **agent},
        )
        path = self.work / f"config-{self.runs}.toml"
        path.write_text(to_toml(doc))
        return path

    def vault_bridge(self, count: int, defaults: dict[str, Any], concurrency: int) -> float | None:
        config = self.config(count=count, defaults=defaults)  # a fresh state directory
        cmd = [*VB, "--config", str(config), "issue", "--all", "--concurrency", str(concurrency)]
        return timed(cmd, self.env)

    def baseline(self, count: int, defaults: dict[str, Any], threads: int) -> float | None:
        config = self.config(count=count, defaults=defaults)
        cmd = [PYTHON, str(HERE / "baseline.py"), "--config", str(config)]
        return timed([*cmd, "--threads", str(threads)], self.env)


def interleaved(repeats: int, *runs: Any) -> list[list[float]]:
    out: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for index, run in enumerate(runs):
            took = run()
            if took is not None:
                out[index].append(took)
    return out


RSA = {"key_type": "rsa", "key_bits": 2048}
EC = {"key_type": "ec", "key_bits": 256}


def one_cluster(lab: Lab, repeats: int, rows: list[list[str]]) -> None:
    for label, keys in (("RSA 2048", RSA), ("EC P-256", EC)):
        for mode in ("sign", "issue"):
            defaults = {**keys, "mode": mode}
            ours, base = interleaved(
                repeats,
                lambda d=defaults: lab.vault_bridge(1, d, DEFAULT_CONCURRENCY),
                lambda d=defaults: lab.baseline(1, d, 1),
            )
            target = "1.15x" if keys is RSA else "1.3x"
            rows.append(
                [
                    f"one cluster, 5 certs, {label}, {mode}, whole process",
                    fmt(ours),
                    fmt(base),
                    ratio(ours, base),
                    target,
                ]
            )


def fleet(lab: Lab, sizes: Sequence[int], repeats: int, rows: list[list[str]]) -> None:
    per_cert: dict[int, float] = {}
    for size in sizes:
        serial, pooled, base1, base8 = interleaved(
            repeats,
            lambda n=size: lab.vault_bridge(n, RSA, 1),
            lambda n=size: lab.vault_bridge(n, RSA, DEFAULT_CONCURRENCY),
            lambda n=size: lab.baseline(n, RSA, 1),
            lambda n=size: lab.baseline(n, RSA, 8),
        )
        certs = size * len(NAMES)
        label = f"{size} cluster(s) x 5, RSA, concurrency 1 / baseline 1 thread"
        rows.append([label, fmt(serial), fmt(base1), ratio(serial, base1), ""])
        target = "1.2x" if size >= 100 else ""
        rows.append(
            [
                f"{size} cluster(s) x 5, RSA, concurrency {DEFAULT_CONCURRENCY} / baseline 8 threads",
                fmt(pooled),
                fmt(base8),
                ratio(pooled, base8),
                target,
            ]
        )
        if pooled:
            per_cert[size] = statistics.median(pooled) / certs
            rows.append(
                [
                    f"{size} cluster(s): time per certificate, concurrency {DEFAULT_CONCURRENCY}",
                    f"{per_cert[size] * 1000:.1f} ms",
                    f"{statistics.median(base8) / certs * 1000:.1f} ms" if base8 else "-",
                    "",
                    "flat from 10 to 100",
                ]
            )


def requests_per_cluster(lab: Lab, count: int, rows: list[list[str]]) -> None:
    lab.clusters.ask(cmd="mark")
    lab.vault_bridge(count, RSA, DEFAULT_CONCURRENCY)
    ours = lab.clusters.ask(cmd="requests")["by_cluster"]
    lab.clusters.ask(cmd="mark")
    lab.baseline(count, RSA, 8)
    base = lab.clusters.ask(cmd="requests")["by_cluster"]
    names = sorted(ours)[:count]
    mine = [len(ours[n]) for n in names]
    theirs = [len(base[n]) for n in names]
    kinds = Counter(r for n in names for r in ours[n])
    detail = ", ".join(f"{k} {v / count:g}" for k, v in sorted(kinds.items()))
    rows.append(
        [
            f"REST requests per cluster, full rotation ({count} clusters)",
            f"{statistics.median(mine):g} (max {max(mine)}): {detail}",
            f"{statistics.median(theirs):g}",
            "",
            "at most 4 + discovery",
        ]
    )


def startup(lab: Lab, repeats: int, rows: list[list[str]]) -> None:
    config = lab.config(count=1, defaults=RSA)
    env = lab.env
    bare, libraries, help_, status = interleaved(
        repeats,
        lambda: timed([PYTHON, "-c", "pass"], env),
        lambda: timed(
            [PYTHON, "-c", "import click, pydantic, hvac, requests, cryptography.x509"], env
        ),
        lambda: timed([*VB, "--help"], env),
        lambda: timed([*VB, "--config", str(config), "status"], env),
    )
    rows.append(["start-up: python -c pass", fmt(bare, "ms"), "", "", ""])
    rows.append(
        ["start-up: import click, pydantic, hvac, requests, x509", fmt(libraries, "ms"), "", "", ""]
    )
    rows.append(["start-up: vault-bridge --help", fmt(help_, "ms"), "", "", ""])
    rows.append(["start-up: vault-bridge status (1 cluster)", fmt(status, "ms"), "", "", ""])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_sample(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return cpu, rss


@contextmanager
def agent(lab: Lab, count: int) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    config = lab.config(count=count, defaults=RSA, listen=f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        [*VB, "--config", str(config), "run"],
        env=lab.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        proc.wait(60)


def idle(lab: Lab, counts: Sequence[int], seconds: float, rows: list[list[str]]) -> None:
    for count in counts:
        # every certificate rotated first, so the agent finds them valid and stays idle
        lab.vault_bridge(count, RSA, DEFAULT_CONCURRENCY)
        with agent(lab, count) as proc:
            time.sleep(2)  # past the start-up pass
            cpu0, _ = proc_sample(proc.pid)
            time.sleep(seconds)
            cpu1, rss = proc_sample(proc.pid)
        per_minute = (cpu1 - cpu0) / seconds * 60
        target = "< 50 MB, < 0.1 CPU-s/min" if count == 1 else "< 90 MB"
        rows.append(
            [
                f"idle agent, {count * 5} certificates: RSS, CPU per idle minute",
                f"{rss:.1f} MB, {per_minute:.3f} CPU-s/min",
                "",
                "",
                target,
            ]
        )


def followup_window(runs: int, rows: list[list[str]]) -> None:
    proc = subprocess.run(
        [PYTHON, str(HERE / "followup_window.py"), "--runs", str(runs), "--sizes", "10"],
        capture_output=True,
        text=True,
        check=False,
    )
    print(proc.stdout, file=sys.stderr)
    line = next((ln for ln in proc.stdout.splitlines() if ln.strip().startswith("10 ")), "")
    rows.append(
        ["Active-Active window, 10 CRDBs (followup_window.py)", line.strip(), "", "", "< 5 ms"]
    )


def table(rows: list[list[str]]) -> str:
    head = ["work", "vault_bridge", "straight-line baseline", "ratio", "target"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="one-cluster and start-up runs")
    parser.add_argument("--fleet-repeats", type=int, default=3, help="runs per fleet size")
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--window-runs", type=int, default=15)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ca-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        return serve(args.serve, args.ca_dir)
    from vault_bridge_lab.openbao import OpenBaoServer, setup_pki

    sizes = [int(s) for s in args.sizes.split(",") if s]
    largest = max([*sizes, 1])
    rows: list[list[str]] = []
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vb-fleet-"))
    try:
        with OpenBaoServer() as vault:
            from vault_bridge_lab.openbao import DEFAULT_ROLE

            roles = {
                "redis": DEFAULT_ROLE,
                "redis-rsa": {**DEFAULT_ROLE, "key_type": "rsa", "key_bits": 2048},
                "redis-ec": {**DEFAULT_ROLE, "key_type": "ec", "key_bits": 256},
            }
            pki = setup_pki(vault.client(), roles=roles)
            clusters = Clusters(largest, work)
            try:
                lab = Lab(vault, pki, clusters, work)
                print(f"clusters up: {largest}", file=sys.stderr)
                one_cluster(lab, args.repeats, rows)
                print("one cluster done", file=sys.stderr)
                startup(lab, args.repeats, rows)
                fleet(lab, sizes, args.fleet_repeats, rows)
                print("fleet done", file=sys.stderr)
                requests_per_cluster(lab, min(10, largest), rows)
                idle(lab, sorted({1, largest}), args.idle_seconds, rows)
            finally:
                clusters.close()
        followup_window(args.window_runs, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{os.cpu_count()} CPU(s), Python {sys.version.split()[0]}, load average {load} at "
        f"the end (1/5/15 min), {time.monotonic() - started:.0f} s in all\n"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
