"""A real OpenBao server with single-node Raft storage, for the high-availability tests.

Unlike the dev server (:mod:`vault_bridge_lab.openbao`) it keeps its data on disk: it is
initialised once (one unseal key), unsealed at every start, and :meth:`RaftOpenBaoServer.restart`
stops and starts it on the same port with everything it held (KV records, PKI mounts, tokens).
It listens on plain HTTP on loopback. The root token and the unseal key are kept out of
``repr``, logs and the process list; the server's output goes to a log file in its directory.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from vault_bridge_lab.bao_process import BaoProcess, OpenBaoError
from vault_bridge_lab.openbao import _free_port_pair, find_bao

logger = logging.getLogger(__name__)

_START_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0


class RaftOpenBaoServer(BaoProcess):
    """``bao server`` with Raft storage in a temporary directory; kept across restarts until
    :meth:`close`. Use as a context manager (start ... close)."""

    _stop_timeout = _STOP_TIMEOUT_SECONDS
    _label = "OpenBao (raft)"
    _not_started = "the raft server is not started"
    _logger = logger

    def __init__(self, *, bao_path: str | None = None) -> None:
        super().__init__(root_token="", bao_path=bao_path)  # ca_cert stays None: plain HTTP
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        # Secrets: never log them, never put them into an exception message.
        self._unseal_key = ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RaftOpenBaoServer(address={self.address!r}, {state})"

    @property
    def unseal_key(self) -> str:
        return self._unseal_key

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start (the first time: initialise) and unseal; returns once it is active."""
        if self.running:
            return
        bao = find_bao(self._bao_path)
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="vault-bridge-raft-")
            self.port = _free_port_pair()
            self.address = f"http://127.0.0.1:{self.port}"
            (self.dir / "data").mkdir()
            (self.dir / "config.hcl").write_text(self._config())
        self._spawn(
            [bao, "server", f"-config={self.dir / 'config.hcl'}"], cwd=self.dir, log_mode="ab"
        )
        try:
            self._bring_up()
        except BaseException:
            self.stop()
            raise

    @property
    def dir(self) -> Path:
        if self._tmpdir is None:
            raise OpenBaoError("the raft server was never started")
        return Path(self._tmpdir.name)

    def _config(self) -> str:
        assert self.port is not None
        return (
            f'storage "raft" {{\n  path = "{self.dir / "data"}"\n  node_id = "node1"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.port + 1}"\n  tls_disable = true\n}}\n'
            f'api_addr = "http://127.0.0.1:{self.port}"\n'
            f'cluster_addr = "https://127.0.0.1:{self.port + 1}"\n'
            "disable_mlock = true\n"
        )

    def _health(self, session: requests.Session) -> dict[str, Any] | None:
        try:
            resp = session.get(
                f"{self.address}/v1/sys/health", params={"standbyok": "true"}, timeout=1.0
            )
        except requests.RequestException:
            return None
        with contextlib.closing(resp):
            try:
                body = resp.json()
            except ValueError:
                return None
        return body if isinstance(body, dict) else None

    def _bring_up(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        with requests.Session() as session:
            session.trust_env = False
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise OpenBaoError(
                        f"bao server exited with code {self._proc.returncode} while starting"
                    )
                health = self._health(session)
                if health is None:
                    time.sleep(0.1)
                    continue
                if not health.get("initialized"):
                    self._initialise(session)
                elif health.get("sealed"):
                    resp = session.put(
                        f"{self.address}/v1/sys/unseal", json={"key": self._unseal_key}, timeout=5
                    )
                    resp.close()
                elif not health.get("standby") and self._writable(session):
                    return
                time.sleep(0.1)
        raise OpenBaoError(f"OpenBao (raft) at {self.address} not active after start")

    def _initialise(self, session: requests.Session) -> None:
        resp = session.put(
            f"{self.address}/v1/sys/init",
            json={"secret_shares": 1, "secret_threshold": 1},
            timeout=10,
        )
        with contextlib.closing(resp):
            if resp.status_code != 200:
                raise OpenBaoError(f"sys/init answered HTTP {resp.status_code}")
            body = resp.json()
        self._unseal_key = str(body["keys_base64"][0])
        self.root_token = str(body["root_token"])

    def _writable(self, session: requests.Session) -> bool:
        """Raft elected itself leader and the token store answers."""
        resp = session.get(
            f"{self.address}/v1/auth/token/lookup-self",
            headers={"X-Vault-Token": self.root_token},
            timeout=2,
        )
        with contextlib.closing(resp):
            return resp.status_code == 200

    def stop(self) -> None:
        """Stop the process (the data stays; :meth:`start` brings it back)."""
        self._close_clients()
        proc, self._proc = self._proc, None
        self._terminate(proc)
        self._close_log()

    def restart(self) -> None:
        self.stop()
        self.start()

    def wait_active(self) -> None:
        """Return once the running server is active again, e.g. after ``sys/unseal``: Raft
        has elected it leader and the token store answers. A server still sealed is unsealed
        with the key on the way."""
        if not self.running:
            raise OpenBaoError("the raft server is not running")
        self._bring_up()

    def close(self) -> None:
        """Stop and remove every file."""
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> RaftOpenBaoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
