"""The agent (`vault-bridge run`) as a real process, against real OpenBao and simulated clusters.

Every scenario starts `python -m vault_bridge --config <file> run` in its own state directory
with its own simulated cluster. Short certificate lifetimes (tens of seconds) make several
renewal rounds happen in a minute. The long scenarios (marked slow) run in background threads
started when the module starts, so they overlap with the short ones; their tests, at the end
of the module, wait for them and report their failures.

Secrets never touch the disk: the Vault token and the cluster password reach the daemon
through its environment; the AppRole secret ID is the only credential file (mode 0600).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
from prometheus_client.parser import text_string_to_metric_families
from vault_bridge_lab.lab import (
    ADMIN_PASSWORD,
    PASSWORD_ENV,
    cluster_table,
    lab_config,
    to_toml,
)
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup, setup_pki
from vault_bridge_lab.simulator import SimulatedCluster

from tests.conftest import register_secret
from tests.integration.conftest import PKI_ROLES
from tests.integration.waiting import free_port, wait_for
from tests.state_files import read_state
from vault_bridge.adapters.tls_probe import verify_chain
from vault_bridge.decisions.schedule import max_attempts
from vault_bridge.models.certificates import CertificateInfo

BULK = "/v1/cluster/certificates"
LOG_DIR = Path(os.environ.get("VAULT_BRIDGE_TEST_LOG_DIR") or "/tmp")  # secret-scanned
READY_TIMEOUT = 60.0


# -- helpers ---------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def fresh_pki(vault: OpenBaoServer) -> PkiSetup:
    """PKI mounts of a scenario's own, so Vault's certificate list counts only its issues."""
    suffix = uuid.uuid4().hex[:8]
    return setup_pki(
        vault.client(), mount=f"agent-root-{suffix}", int_mount=f"agent-{suffix}", roles=PKI_ROLES
    )


def vault_serials(vault: OpenBaoServer, mount: str) -> set[str]:
    """Every certificate stored on a PKI mount (``LIST <mount>/certs``)."""
    try:
        answer = vault.client().secrets.pki.list_certificates(mount_point=mount)
    except hvac.exceptions.InvalidPath:  # 404: none yet
        return set()
    return {str(s) for s in answer["data"]["keys"]}


def revocation_time(vault: OpenBaoServer, mount: str, serial: str) -> int:
    """When Vault revoked a certificate (Unix seconds; 0: not revoked)."""
    data = vault.client().secrets.pki.read_certificate(serial=serial, mount_point=mount)["data"]
    return int(data.get("revocation_time") or 0)


def revoked(vault: OpenBaoServer, mount: str, serial: str) -> bool:
    return revocation_time(vault, mount, serial) > 0


def served(sim: SimulatedCluster, name: str) -> CertificateInfo:
    return CertificateInfo.from_pem(sim.installed_pem(name))


def journal_phases(state_dir: Path) -> list[str]:
    return [entry["phase"] for entry in read_state(state_dir).get("journal", [])]


class Lab:
    """One scenario's world: a simulated cluster, a configuration file, a state directory."""

    def __init__(
        self,
        tmp: Path,
        vault: OpenBaoServer,
        pki: PkiSetup,
        *,
        names: Sequence[str] = ("proxy",),
        ttl: str = "1h",
        renew_before: str | None = None,
        agent: dict[str, Any] | None = None,
        auth: dict[str, Any] | None = None,
        clusters: Sequence[str] = ("east",),
        verify_endpoints: dict[str, str] | None = None,
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.vault = vault
        self.pki = pki
        self.state_dir = tmp / "state"
        self.config_path = tmp / "config.toml"
        self.port = free_port()
        self.sims = [SimulatedCluster(name) for name in clusters]
        for sim in self.sims:
            sim.start()
        self.names = tuple(names)
        self.ttl = ttl
        self.renew_before = renew_before
        self.agent = {
            "listen": f"127.0.0.1:{self.port}",
            "max_issues_per_hour": 1000,
            "resync_interval": "10m",
            "stop_grace": "20s",
            **(agent or {}),
        }
        self.auth = auth
        self.verify_endpoints = verify_endpoints or {}
        self.write_config()

    @property
    def sim(self) -> SimulatedCluster:
        return self.sims[0]

    def document(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        defaults: dict[str, Any] = {"key_type": "ec", "key_bits": 256, "ttl": self.ttl}
        if self.renew_before:
            defaults["renew_before"] = self.renew_before
        tables = []
        for sim in self.sims:
            table = cluster_table(sim, self.tmp, role="redis", names=names or self.names)
            table["verify_endpoints"] = {**table["verify_endpoints"], **self.verify_endpoints}
            tables.append(table)
        return lab_config(
            self.vault,
            self.pki,
            tables,
            state_dir=self.state_dir,
            defaults=defaults,
            agent=self.agent,
            auth=self.auth,
        )

    def write_config(self, names: Sequence[str] | None = None, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else to_toml(self.document(names)))

    def env(self) -> dict[str, str]:
        """Secrets through the environment only; with AppRole, no token at all."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        if self.auth is None:
            env["VAULT_TOKEN"] = self.vault.root_token
        env[PASSWORD_ENV] = ADMIN_PASSWORD
        return env

    def daemon(self, label: str = "agent", *, port: int | None = None) -> Daemon:
        """The agent; with ``port``, a second one on the same state directory."""
        config = self.config_path
        if port is not None:
            document = self.document()
            document["agent"]["listen"] = f"127.0.0.1:{port}"
            config = self.tmp / f"config-{port}.toml"
            config.write_text(to_toml(document))
        return Daemon(self, label, config, port or self.port)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "vault_bridge", "--config", str(self.config_path), *args]
        done = subprocess.run(
            cmd, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        print(done.stdout, done.stderr)  # for the secret scan and for failures
        return done

    def close(self) -> None:
        for sim in self.sims:
            sim.stop()


_daemon_ids = iter(range(1, 1_000_000))


class Daemon:
    """`python -m vault_bridge --config <file> --log-format json run` as a child process."""

    def __init__(self, lab: Lab, label: str, config: Path, port: int) -> None:
        self.lab = lab
        self.port = port
        self.log_path = LOG_DIR / f"agent-{label}-{next(_daemon_ids)}.log"
        self._log = self.log_path.open("wb")
        cmd = [
            sys.executable,
            "-m",
            "vault_bridge",
            "--config",
            str(config),
            "--log-format",
            "json",
            "-v",  # debug lines too: the secret scan reads them all
            "run",
        ]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, env=lab.env(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    # -- talking to it ---------------------------------------------------------------------

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        try:
            wait_for("the agent to be ready", self.ready, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    # -- its log ---------------------------------------------------------------------------

    def log(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def messages(self, contains: str, level: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.log()
            if contains in e.get("message", "") and (level is None or e.get("level") == level)
        ]

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "agent log tail:\n" + "\n".join(text)


class TcpProxy:
    """A TCP relay on loopback that can be switched to ``reject`` (accept and close at once:
    every connection attempt is counted) or ``hold`` (accept and never answer)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.setblocking(False)
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.mode = "forward"
        self.attempts: list[float] = []  # monotonic times of connections taken while not forwarding
        self.forwarded = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            if mode != "forward":
                for sock in list(self._open):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.server, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        conn, _ = self.server.accept()
                    except OSError:
                        continue
                    self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        with self._lock:
            mode = self.mode
            if mode != "forward":
                self.attempts.append(time.monotonic())
            self._open.add(conn)
        if mode == "reject":
            self._drop(conn)
            return
        if mode == "hold":
            return  # kept open, never answered, closed by close() or a mode change
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._drop(conn)
            return
        with self._lock:
            self.forwarded += 1
            self._open.add(upstream)
        for src, dst in ((conn, upstream), (upstream, conn)):
            thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            self._drop(src)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(5)
        self.set_mode("reject")
        for thread in self._threads:
            thread.join(5)
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            self._drop(sock)
        self.server.close()
        self._wake_r.close()
        self._wake_w.close()


# -- background scenarios --------------------------------------------------------------------


class Scenario(threading.Thread):
    """One long scenario in a thread; its failure is raised again by :meth:`outcome`."""

    def __init__(self, name: str, fn: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(name=f"scenario-{name}", daemon=True)
        self.fn = fn
        self.result: dict[str, Any] = {}
        self.details: str | None = None

    def run(self) -> None:
        try:
            self.fn(self.result)
        except BaseException:  # reported by the scenario's test
            self.details = traceback.format_exc()


class Background:
    """Long scenarios running concurrently with the rest of the module."""

    def __init__(self) -> None:
        self.scenarios: dict[str, Scenario] = {}

    def start(self, name: str, fn: Callable[[dict[str, Any]], None]) -> None:
        self.scenarios[name] = Scenario(name, fn)
        self.scenarios[name].start()

    def join(self, name: str, timeout: float = 280) -> dict[str, Any]:
        scenario = self.scenarios[name]
        scenario.join(timeout)
        assert not scenario.is_alive(), f"scenario {name} still runs after {timeout}s"
        if scenario.details is not None:
            raise AssertionError(f"scenario {name} failed:\n{scenario.details}")
        return scenario.result


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def lab_factory(
    openbao: OpenBaoServer, pki: PkiSetup, tmp_path: Path
) -> Iterator[Callable[..., Lab]]:
    labs: list[Lab] = []

    def make(**kw: Any) -> Lab:
        vault = kw.pop("vault", openbao)
        lab = Lab(tmp_path / f"lab{len(labs)}", vault, kw.pop("pki", pki), **kw)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()


# -- restarts --------------------------------------------------------------------------------


def test_restarts_issue_nothing_new(
    openbao: OpenBaoServer, lab_factory: Callable[..., Lab]
) -> None:
    own = fresh_pki(openbao)
    lab = lab_factory(pki=own, names=("proxy", "cm", "syncer"))
    before = vault_serials(openbao, own.issuing_mount)
    with lab.daemon("restart-0") as first:
        first.wait_ready()
        assert first.stop() == 0
    issued_first = vault_serials(openbao, own.issuing_mount) - before
    assert len(issued_first) == 3
    installs = lab.sim.install_count
    serials = {n: served(lab.sim, n).serial for n in lab.names}
    for i in range(10):
        with lab.daemon(f"restart-{i + 1}") as again:
            again.wait_ready()
            assert again.stop() == 0
    assert vault_serials(openbao, own.issuing_mount) - before == issued_first
    assert lab.sim.install_count == installs
    assert {n: served(lab.sim, n).serial for n in lab.names} == serials


# -- kill -9 at each point of a rotation -----------------------------------------------------


def assert_settled(lab: Lab, vault: OpenBaoServer) -> dict[str, CertificateInfo]:
    """Every certificate installed, ours, valid and served; the journal empty; the state
    file naming what the cluster serves."""
    state = read_state(lab.state_dir)
    assert state.get("journal") == [], state.get("journal")
    out = {}
    for name in lab.names:
        info = served(lab.sim, name)
        assert info.not_after > now() and info.issuer != info.subject, name
        assert state["certificates"][f"{lab.sim.name}/{name}"]["serial"] == info.serial
        out[name] = info
        endpoint = lab.sim.endpoint(name) if name in ("cm", "proxy") else None
        if endpoint:
            verify_chain(endpoint, lab.pki.root_pem)
    return out


@pytest.mark.fault("crash")
def test_kill_after_issue_before_install(
    openbao: OpenBaoServer, lab_factory: Callable[..., Lab]
) -> None:
    lab = lab_factory(names=("proxy",))
    lab.sim.inject_fault("GET", "/v1/nodes", 0, delay=20)  # held after Vault issued
    with lab.daemon("kill-issued") as first:
        wait_for("the journal to say issued", lambda: journal_phases(lab.state_dir) == ["issued"])
        first.kill()
    orphan = read_state(lab.state_dir)["journal"][0]
    assert lab.sim.install_count == 0
    with lab.daemon("kill-issued-restart") as second:
        second.wait_ready()
        settled = assert_settled(lab, openbao)
        assert settled["proxy"].serial != orphan["serial"]
        # never installed: revoked at once, not after the grace period
        wait_for(
            "the orphan to be revoked", lambda: revoked(openbao, orphan["mount"], orphan["serial"])
        )
        assert second.messages("issued but never installed")
        assert second.stop() == 0
    assert lab.sim.install_count == 1


@pytest.mark.parametrize("happens", [True, False], ids=["install-happens", "install-fails"])
@pytest.mark.fault("crash")
def test_kill_during_install(
    openbao: OpenBaoServer, lab_factory: Callable[..., Lab], happens: bool
) -> None:
    lab = lab_factory(names=("proxy", "cm"))
    # The install request is held 3 s; the daemon dies meanwhile; the cluster then applies
    # it (status 0) or refuses it (503): the restarted daemon must find out which.
    lab.sim.inject_fault("PUT", BULK, 0 if happens else 503, delay=3)
    with lab.daemon("kill-installing") as first:
        wait_for(
            "the journal to say installing",
            lambda: journal_phases(lab.state_dir) == ["installing"] * 2,
        )
        # The journal is written before the request is sent: kill only once the cluster holds it.
        wait_for("the install request to reach the cluster", lambda: lab.sim.faults_pending() == 0)
        first.kill()
    intents = {e["name"]: e for e in read_state(lab.state_dir)["journal"]}
    time.sleep(3.5)  # the held request is answered now
    assert lab.sim.install_count == (2 if happens else 0)
    with lab.daemon("kill-installing-restart") as second:
        second.wait_ready()
        settled = assert_settled(lab, openbao)
        for name, intent in intents.items():
            if happens:  # found on the cluster: kept, not issued again
                assert settled[name].serial == intent["serial"]
            else:  # never went in: revoked, and a new one installed
                assert settled[name].serial != intent["serial"]
                wait_for(
                    "the orphan to be revoked",
                    functools.partial(revoked, openbao, intent["mount"], intent["serial"]),
                )
        assert second.messages(
            "the interrupted install did " + ("happen" if happens else "not happen")
        )
        assert second.stop() == 0
    assert lab.sim.install_count == 2


@pytest.mark.fault("crash")
def test_kill_after_install_before_the_journal_says_so(
    openbao: OpenBaoServer, lab_factory: Callable[..., Lab]
) -> None:
    # The check of the served certificate after the install goes through a relay that holds
    # the connection: the daemon is killed after the install, before it recorded it.
    with SimulatedCluster("probe") as other:
        relay = TcpProxy(other.endpoint("cm"))
        try:
            lab = lab_factory(names=("cm",), verify_endpoints={"cm": relay.address})
            relay.set_mode("hold")
            with lab.daemon("kill-installed") as first:
                wait_for("the install", lambda: lab.sim.install_count == 1)
                wait_for("the served-certificate check", lambda: relay.attempts)
                assert journal_phases(lab.state_dir) == ["installing"]
                first.kill()
            intent = read_state(lab.state_dir)["journal"][0]
            relay.set_mode("forward")
            with lab.daemon("kill-installed-restart") as second:
                second.wait_ready()
                state = read_state(lab.state_dir)
                assert state["journal"] == []
                assert served(lab.sim, "cm").serial == intent["serial"]
                assert state["certificates"]["east/cm"]["serial"] == intent["serial"]
                assert second.stop() == 0
            assert lab.sim.install_count == 1
        finally:
            relay.close()


# -- signals and the CLI ---------------------------------------------------------------------


def test_sighup_reloads_and_a_bad_configuration_is_kept_out(
    openbao: OpenBaoServer, lab_factory: Callable[..., Lab]
) -> None:
    lab = lab_factory(names=("proxy",))
    with lab.daemon("sighup") as agent:
        agent.wait_ready()
        assert served(lab.sim, "cm").issuer == served(lab.sim, "cm").subject  # still self-signed
        good = lab.config_path.read_text()
        lab.write_config(text=good + "\n[bogus]\nkey = 1\n")
        agent.send(signal.SIGHUP)
        wait_for("the rejected reload", lambda: agent.messages("reloading", level="ERROR"))
        assert agent.ready()  # still running on the old configuration

        lab.write_config(names=("proxy", "cm"))
        lab.names = ("proxy", "cm")
        agent.send(signal.SIGHUP)
        wait_for(
            "cm to be installed",
            lambda: served(lab.sim, "cm").issuer != served(lab.sim, "cm").subject,
        )
        agent.wait_ready()
        assert agent.messages("configuration reloaded")
        assert_settled(lab, openbao)
        assert agent.stop() == 0


def test_missing_capability_is_reported_and_not_retried(
    openbao: OpenBaoServer, pki: PkiSetup, lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    auth = approle(openbao, tmp_path, policy=agent_policy(pki, sign=False))
    lab = lab_factory(names=("proxy",), auth=auth, agent={"resync_interval": "1h"})
    with lab.daemon("forbidden") as agent:
        wait_for("the configuration error", lambda: agent.messages("configuration error"), 30)
        status, reason = agent.get("/readyz")
        assert status == 503
        assert (
            "permission denied: the policy needs 'update' on" in reason and "/sign/redis" in reason
        )
        time.sleep(12)  # longer than the first retry of an ordinary failure (8-10 s)
        signs = [r for r in agent.messages("permission denied") if r["level"] == "ERROR"]
        assert len(agent.messages("configuration error")) == 1, signs  # not hammered
        assert lab.sim.install_count == 0
        assert agent.stop() == 0


@pytest.mark.fault("crash")
def test_sigterm_mid_pass_finishes_the_step_and_issues_nothing_more(
    openbao: OpenBaoServer, lab_factory: Callable[..., Lab]
) -> None:
    own = fresh_pki(openbao)
    lab = lab_factory(pki=own, names=("proxy", "syncer"), clusters=("east", "west"))
    east, west = lab.sims
    # A pass obtains a cluster's certificates as soon as that cluster is read, and installs
    # once every certificate is obtained: hold it after east's certificates came from Vault,
    # on west's read (nothing of west asked of Vault yet).
    west.inject_fault("GET", BULK, 0, delay=4)
    with lab.daemon("sigterm") as agent:
        wait_for("east's certificates", lambda: journal_phases(lab.state_dir) == ["issued"] * 2)
        issued_before_term = vault_serials(openbao, own.issuing_mount)
        started = time.monotonic()
        agent.send(signal.SIGTERM)
        assert agent.proc.wait(25) == 0
        took = time.monotonic() - started
    assert took < 20, took  # stop_grace
    assert agent.messages("received SIGTERM")
    state = read_state(lab.state_dir)
    assert state["journal"] == []
    assert east.install_count == 2  # the step in progress was finished (installed) ...
    for name in ("proxy", "syncer"):
        assert state["certificates"][f"east/{name}"]["serial"] == served(east, name).serial
    assert west.install_count == 0  # ... and nothing new was started
    assert vault_serials(openbao, own.issuing_mount) == issued_before_term
    with lab.daemon("sigterm-restart") as again:  # the next start does the rest
        again.wait_ready()
        assert west.install_count == 2
        assert again.stop() == 0


def test_a_second_agent_waits_for_the_lock(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(names=("proxy",))
    with lab.daemon("lock-first") as first:
        first.wait_ready()
        with lab.daemon("lock-second", port=free_port()) as second:
            wait_for("the second agent's listener", lambda: _answers(second))
            time.sleep(1)
            status, reason = second.get("/readyz")
            assert status == 503 and f"locked by the agent (pid {first.proc.pid})" in reason
            assert lab.sim.install_count == 1
            assert first.stop() == 0
            second.wait_ready(20)  # takes over within its 5 s lock poll
            assert lab.sim.install_count == 1  # and re-issues nothing
            assert second.stop() == 0


def _answers(daemon: Daemon) -> bool:
    try:
        daemon.get("/healthz")
    except OSError:
        return False
    return True


def test_issue_and_run_once_talk_to_the_running_agent(
    openbao: OpenBaoServer, lab_factory: Callable[..., Lab]
) -> None:
    lab = lab_factory(names=("proxy", "cm"))
    first = lab.cli("run", "--once")  # no agent: the CLI rotates itself, under the lock
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("installed ") == 2
    before = served(lab.sim, "proxy").serial
    with lab.daemon("issue") as agent:
        agent.wait_ready()
        done = lab.cli("issue", "proxy")
        assert done.returncode == 0, done.stderr
        assert "installed proxy on east" in done.stdout
        assert served(lab.sim, "proxy").serial != before
        assert agent.messages("request ") and agent.messages("rotated: proxy")
        again = lab.cli("run", "--once")
        assert again.returncode == 0, again.stderr
        assert "nothing to do" in again.stdout
        assert lab.sim.install_count == 3
        assert agent.stop() == 0
    assert not (lab.state_dir / "agent.pid").exists()
    assert list((lab.state_dir / "requests").iterdir()) == []


# -- long scenarios (background) -------------------------------------------------------------


@dataclass
class Validity:
    """What a watcher saw of one certificate name: serials in order, and any lapse."""

    seen: list[tuple[float, CertificateInfo]] = field(default_factory=list)  # (time, cert)
    lapses: list[str] = field(default_factory=list)


class Watcher:
    """Samples what a cluster has installed, every 0.2 s, in a thread."""

    def __init__(self, sim: SimulatedCluster, names: Sequence[str]) -> None:
        self.sim = sim
        self.names = names
        self.by_name = {n: Validity() for n in names}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name in self.names:
                info = served(self.sim, name)
                validity = self.by_name[name]
                if not validity.seen or validity.seen[-1][1].serial != info.serial:
                    validity.seen.append((time.time(), info))
                if info.issuer != info.subject and info.not_after <= now():
                    validity.lapses.append(f"{name} {info.serial} expired at {info.not_after}")

    def ours(self, name: str) -> list[tuple[float, CertificateInfo]]:
        return [(t, c) for t, c in self.by_name[name].seen if c.issuer != c.subject]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scenario_rounds(vault: OpenBaoServer, pki: PkiSetup, tmp: Path, out: dict[str, Any]) -> None:
    """Several renewal rounds, unattended: on time, never lapsing, no busy loop; each
    superseded certificate revoked after the grace period."""
    lab = Lab(
        tmp,
        vault,
        pki,
        names=("proxy", "cm"),
        ttl="40s",
        renew_before="25s",
        agent={"revoke_grace": "5s"},
    )
    watcher = Watcher(lab.sim, lab.names)
    mount = pki.issuing_mount

    def superseded_revoked() -> bool:
        return all(
            revocation_time(vault, mount, c.serial)
            for n in lab.names
            for _, c in watcher.ours(n)[:-1]
        )

    try:
        with lab.daemon("rounds") as agent:
            wait_for(
                "three renewals of each certificate",
                lambda: all(len(watcher.ours(n)) >= 4 for n in lab.names),
                timeout=120,
                every=0.5,
            )
            wait_for("the superseded certificates to be revoked", superseded_revoked, timeout=15)
            out["revoked"] = {
                n: [
                    (
                        replaced.serial,
                        replaced.not_after,
                        seen_at,
                        revocation_time(vault, mount, replaced.serial),
                    )
                    for (_, replaced), (seen_at, _) in itertools.pairwise(watcher.ours(n))
                ]
                for n in lab.names
            }
            out["cpu"] = cpu_seconds(agent.proc.pid)
            out["elapsed"] = time.monotonic() - agent.started
            out["metrics"] = agent.metrics()
            out["ready"] = agent.ready()
            out["current"] = {n: served(lab.sim, n) for n in lab.names}
            assert agent.stop() == 0
            out["errors"] = agent.messages("", level="ERROR")
    finally:
        watcher.close()
        lab.close()
    out["seen"] = {n: watcher.ours(n) for n in lab.names}
    out["lapses"] = [lapse for v in watcher.by_name.values() for lapse in v.lapses]


def scenario_outage(_: OpenBaoServer, __: PkiSetup, tmp: Path, out: dict[str, Any]) -> None:
    """Vault unreachable for 35 s across a renewal: retries within the backoff, no lapse."""
    with OpenBaoServer(tls=True) as server:
        register_secret(server.root_token)
        pki = fresh_pki(server)
        relay = TcpProxy(server.address.removeprefix("https://"))
        try:
            behind = _Endpoint(f"https://{relay.address}", server.ca_cert, server.root_token)
            lab = Lab(tmp, behind, pki, names=("proxy",), ttl="80s", renew_before="50s")  # type: ignore[arg-type]
            watcher = Watcher(lab.sim, lab.names)
            try:
                with lab.daemon("outage") as agent:
                    agent.wait_ready()
                    first = served(lab.sim, "proxy")
                    out["first"] = first
                    # down from 60 s before expiry (the renewal is due 50-55.5 s before) for 35 s
                    start = first.not_after - timedelta(seconds=60)
                    time.sleep(max(0.0, (start - now()).total_seconds()))
                    relay.set_mode("reject")
                    down = time.monotonic()
                    out["outage_started"] = now()
                    wait_for("readiness to drop", lambda: not agent.ready(), timeout=60, every=0.5)
                    out["reasons"] = agent.get("/readyz")[1]
                    time.sleep(max(0.0, 35 - (time.monotonic() - down)))
                    relay.set_mode("forward")
                    out["window"] = time.monotonic() - down
                    out["attempts"] = list(relay.attempts)
                    wait_for(
                        "the renewal after the outage",
                        lambda: served(lab.sim, "proxy").serial != first.serial,
                        timeout=60,
                    )
                    out["renewed_at"] = now()
                    out["second"] = served(lab.sim, "proxy")
                    agent.wait_ready(30)
                    assert agent.stop() == 0
            finally:
                watcher.close()
                lab.close()
            out["lapses"] = [lapse for v in watcher.by_name.values() for lapse in v.lapses]
        finally:
            relay.close()


@dataclass
class _Endpoint:
    """A Vault address for the configuration (the relay in front of the real server)."""

    address: str
    ca_cert: str | None
    root_token: str


def approle(
    vault: OpenBaoServer,
    tmp: Path,
    *,
    policy: str,
    token_ttl: str = "1h",
    token_max_ttl: str = "2h",
) -> dict[str, Any]:
    """An AppRole login (its own auth mount and policy) as the ``[vault.auth]`` table; the
    secret ID goes to a 0600 file, the only credential the tests write."""
    client = vault.client()
    suffix = uuid.uuid4().hex[:8]
    mount, name = f"approle-{suffix}", f"agent-{suffix}"
    client.sys.create_or_update_policy(name=name, policy=policy)
    client.sys.enable_auth_method("approle", path=mount)
    client.auth.approle.create_or_update_approle(
        "agent",
        token_policies=[name],
        token_ttl=token_ttl,
        token_max_ttl=token_max_ttl,
        mount_point=mount,
    )
    role_id = client.auth.approle.read_role_id("agent", mount_point=mount)["data"]["role_id"]
    answer = client.auth.approle.generate_secret_id("agent", mount_point=mount)
    secret_id = answer["data"]["secret_id"]
    register_secret(secret_id)
    tmp.mkdir(parents=True, exist_ok=True)
    secret_file = tmp / f"secret-id-{suffix}"
    secret_file.touch(mode=0o600)
    secret_file.write_text(secret_id)
    return {
        "method": "approle",
        "role_id": role_id,
        "secret_id_file": str(secret_file),
        "mount": mount,
    }


def agent_policy(pki: PkiSetup, *, sign: bool = True) -> str:
    issuing = pki.issuing_mount
    return (
        (f'path "{issuing}/sign/redis" {{ capabilities = ["update"] }}\n' if sign else "")
        + f'path "{issuing}/revoke" {{ capabilities = ["update"] }}\n'
        + f'path "{issuing}/cert/ca_chain" {{ capabilities = ["read"] }}\n'
    )


def scenario_token(vault: OpenBaoServer, pki: PkiSetup, tmp: Path, out: dict[str, Any]) -> None:
    """AppRole tokens living 8 s (max 20 s): renewed at 2/3, logged in again when they cannot
    be, and once revoked behind the agent's back; certificates keep being renewed."""
    client = vault.client()
    auth = approle(vault, tmp, policy=agent_policy(pki), token_ttl="8s", token_max_ttl="20s")
    lab = Lab(tmp, vault, pki, names=("proxy",), ttl="40s", renew_before="25s", auth=auth)
    watcher = Watcher(lab.sim, lab.names)
    try:
        with lab.daemon("token") as agent:
            agent.wait_ready()
            expiries = []
            deadline = time.monotonic() + 45
            revoked_accessor = None
            while time.monotonic() < deadline:
                metric = agent.metrics().get(
                    ("vault_bridge_vault_token_expiration_timestamp_seconds", ())
                )
                expiries.append((time.time(), metric))
                if revoked_accessor is None and time.monotonic() > deadline - 30:
                    logins = agent.messages("logged in to Vault")
                    accessor = logins[-1]["message"].split("accessor ")[1].split(",")[0]
                    client.auth.token.revoke_accessor(accessor)
                    revoked_accessor = accessor
                time.sleep(1)
            out["expiries"] = expiries
            out["revoked_accessor"] = revoked_accessor
            out["ready"] = agent.ready()
            out["logins"] = agent.messages("logged in to Vault")
            out["renewals"] = agent.messages("renewed Vault token")
            out["config_errors"] = agent.messages("configuration error")
            assert agent.stop() == 0
    finally:
        watcher.close()
        lab.close()
    out["seen"] = watcher.ours("proxy")
    out["lapses"] = [lapse for v in watcher.by_name.values() for lapse in v.lapses]


ScenarioFn = Callable[[OpenBaoServer, PkiSetup, Path, dict[str, Any]], None]
LONG: dict[str, ScenarioFn] = {  # test -> the scenario it reports on
    "test_rotates_on_schedule_unattended": scenario_rounds,
    "test_vault_outage_within_backoff_and_no_lapse": scenario_outage,
    "test_token_renewal_and_relogin": scenario_token,
}


@pytest.fixture(scope="module")
def background(
    request: pytest.FixtureRequest,
    openbao: OpenBaoServer,
    pki: PkiSetup,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Background]:
    """Starts the selected long scenarios at once, so they overlap with everything else."""
    selected = {
        item.name
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.module is request.module
    }
    runs = Background()
    for test, scenario in LONG.items():
        if test in selected:
            tmp = tmp_path_factory.mktemp(scenario.__name__)
            runs.start(test, functools.partial(scenario, openbao, pki, tmp))
    yield runs
    for thread in runs.scenarios.values():
        thread.join(300)


@pytest.fixture(autouse=True, scope="module")
def _start_background(background: Background) -> None:
    """Autouse: the long scenarios start with the module's first test."""


@pytest.mark.slow
def test_rotates_on_schedule_unattended(background: Background) -> None:
    out = background.join("test_rotates_on_schedule_unattended")
    assert out["lapses"] == []
    assert out["errors"] == []
    for name, seen in out["seen"].items():
        assert len(seen) >= 4, name
        for (_, previous), (_, current) in itertools.pairwise(seen):
            # due at not_after - renew_before (25 s) minus a jitter of up to 5% of the
            # lifetime (40 s + Vault's 30 s backdating): seen within a few seconds of it
            latest = previous.not_after - timedelta(seconds=25)
            earliest = latest - timedelta(seconds=3.5)
            first_seen = current.not_before + timedelta(seconds=30)  # Vault backdates 30 s
            assert earliest - timedelta(seconds=1) <= first_seen <= latest + timedelta(seconds=4), (
                name,
                previous.serial,
                first_seen,
                earliest,
                latest,
            )
    metrics = out["metrics"]

    def metric(family: str, /, **labels: str) -> float:
        return float(metrics[(family, tuple(sorted({"cluster": "east", **labels}.items())))])

    for name, info in out["current"].items():
        expiration = metric("vault_bridge_certificate_expiration_timestamp_seconds", name=name)
        assert expiration == pytest.approx(info.not_after.timestamp())
        renewal = metric("vault_bridge_certificate_renewal_timestamp_seconds", name=name)
        assert expiration - 25 - 3.5 <= renewal <= expiration - 25
        ready = "vault_bridge_certificate_ready_status"
        assert metric(ready, name=name, condition="True") == 1
        assert metric(ready, name=name, condition="False") == 0
        assert metric("vault_bridge_certificate_expiring", name=name) == 0
        assert metric("vault_bridge_rotations_total", name=name, result="success") >= 3
    assert out["ready"]
    for name, revocations in out["revoked"].items():
        assert len(revocations) >= 3, name
        for serial, not_after, replaced_at, revoked_at in revocations:
            # after the new one was installed plus the 5 s grace, and never an expired one
            # (Vault's revocation_time is whole seconds; the watcher samples every 0.2 s and
            # may lag on a loaded machine)
            assert replaced_at + 5 - 2.5 <= revoked_at < not_after.timestamp(), (name, serial)
    # it slept between deadlines: a polling loop would burn far more than this
    assert out["cpu"] < 0.15 * out["elapsed"], out


@pytest.mark.slow
def test_vault_outage_within_backoff_and_no_lapse(background: Background) -> None:
    out = background.join("test_vault_outage_within_backoff_and_no_lapse")
    assert out["lapses"] == []
    assert "Vault" in out["reasons"] or "cannot reach" in out["reasons"], out["reasons"]
    attempts = out["attempts"]
    assert len(attempts) >= 2, attempts  # it kept trying ...
    # ... no more often than the backoff allows (first retry after 8-10 s, then doubling,
    # capped at a tenth of the certificate's remaining lifetime, at least 10 s nominal)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 7.9 for gap in gaps), gaps
    # and never less often: close to expiry the cap stays at its 10 s floor instead of
    # doubling to 20 s, 40 s, ... (a tenth of the remaining ~50 s is below the floor)
    assert all(gap <= 12.5 for gap in gaps), gaps  # 10 s and the time a pass takes
    bound = max_attempts(
        timedelta(seconds=out["window"]),
        not_after=out["first"].not_after,
        start=out["outage_started"],
    )
    assert len(attempts) <= bound, (attempts, bound)
    assert out["renewed_at"] < out["first"].not_after
    assert out["second"].not_after > out["first"].not_after


@pytest.mark.slow
def test_token_renewal_and_relogin(background: Background) -> None:
    out = background.join("test_token_renewal_and_relogin")
    assert out["lapses"] == []
    assert len(out["logins"]) >= 3, out["logins"]  # first login, after max TTL, after revoke
    assert out["renewals"], "the token was never renewed at 2/3 of its TTL"
    assert out["config_errors"] == []  # a revoked token is not a policy problem
    assert len(out["seen"]) >= 3  # renewals went on across token lifetimes
    # the exported expiry moved on with each renewal and login, and was never in the past
    assert len({e for _, e in out["expiries"]}) >= 3
    assert all(e is not None and e > at for at, e in out["expiries"]), out["expiries"]
    assert out["ready"]
