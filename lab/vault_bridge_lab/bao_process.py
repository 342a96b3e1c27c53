"""What the OpenBao runners share: the ``bao`` process, its log file and the clients handed out.

:class:`~vault_bridge_lab.openbao.OpenBaoServer` (the dev server) and
:class:`~vault_bridge_lab.openbao_raft.RaftOpenBaoServer` (Raft storage) differ in how they
start and become ready; spawning the process with a clean environment, stopping it (terminate,
then kill) and the ``hvac`` clients are the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import hvac


class OpenBaoError(RuntimeError):
    """The dev server could not be found, started or stopped."""


class BaoProcess:
    """A ``bao server`` child process; subclasses say how it is started and made ready."""

    # Set by each subclass.
    _stop_timeout: ClassVar[float]
    _label: ClassVar[str]  # how the log lines name the server
    _not_started: ClassVar[str]  # the error when a client is asked for before the start
    _logger: ClassVar[logging.Logger]

    def __init__(self, *, root_token: str, bao_path: str | None) -> None:
        self._bao_path = bao_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._clients: list[Any] = []
        self.port: int | None = None
        self.address = ""
        self.ca_cert: str | None = None
        # The root token: never log it, never put it in an exception message.
        self.root_token = root_token

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(
        self,
        args: list[str],
        *,
        cwd: Path,
        log_mode: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """Start ``args`` in ``cwd`` with its output appended/written to ``cwd/bao.log``.

        The environment loses every ``VAULT_``, ``BAO_`` and ``HCP_`` variable; ``HOME`` is
        ``cwd``. ``extra_env`` goes through the environment, out of sight of ``ps``.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "HCP_"))}
        env.update(extra_env or {})
        env["HOME"] = str(cwd)
        self._log_file = (cwd / "bao.log").open(log_mode)
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
        self._logger.info("started %s pid %s on %s", self._label, self._proc.pid, self.address)

    def _close_clients(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.adapter.close()
        self._clients.clear()

    def _terminate(self, proc: subprocess.Popen[bytes] | None) -> None:
        """Terminate ``proc`` if it still runs; kill it when it does not stop in time."""
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=self._stop_timeout)
            self._logger.info("stopped %s pid %s", self._label, proc.pid)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def client(self, token: str | None = None) -> hvac.Client:
        """An ``hvac.Client`` with the root token (or ``token``), trusting ``ca_cert`` if set.

        The server closes the clients it handed out when it stops; close earlier with
        ``client.adapter.close()`` if you like.
        """
        if not self.address:
            raise OpenBaoError(self._not_started)
        client = hvac.Client(
            url=self.address,
            token=token if token is not None else self.root_token,
            verify=self.ca_cert or True,
            cert=None,
            timeout=10,
        )
        self._clients.append(client)
        return client
