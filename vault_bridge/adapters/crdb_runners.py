"""Step 2 of the Active-Active follow-up, ``crdb update --force`` for one CRDB, three ways.

- :class:`RestRunner`: ``POST /v1/crdbs/<GUID>/updates {"force_update": true}``, then polls
  ``GET /v1/crdb_tasks/<id>`` until ``finished`` or ``failed``;
- :class:`CrdbCliRunner`: the ``crdb-cli`` binary (``crdb_cli_path``) as a subprocess;
- :class:`DockerRunner`: the same command inside a Redis Enterprise node container, through the
  Docker Engine API (:class:`DockerExec`, the one adapter for the ``docker`` package).

Each runner calls ``on_sent()`` right before the request (or command) leaves, so that the
window from the install to step 2 is measured where it closes, and raises
:class:`FollowUpError` (with crdb-cli's output attached) when the update does not finish.
Retrying is the caller's business (:mod:`vault_bridge.rotation.followups`).
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vault_bridge.adapters.ports import ClusterDatabases, CrdbRunner, Monotonic, Sleep, UpdateResult
from vault_bridge.adapters.rest.databases import new_task_id
from vault_bridge.config.settings import ClusterSettings
from vault_bridge.errors import ClusterError, FollowUpError
from vault_bridge.models.cluster import CrdbTask

logger = logging.getLogger(__name__)

OUTPUT_TAIL = 2000  # characters of crdb-cli output kept in an error
_TASK_CREATED = re.compile(r"Task\s+(\S+)\s+created")
_STATUS_CHANGED = re.compile(r"Status changed:\s*(\w+)\s*->\s*(\w+)")


def crdb_cli_command(path: str, guid: str) -> list[str]:
    return [path, "crdb", "update", "--crdb-guid", guid, "--force"]


# -- REST ------------------------------------------------------------------------------------


class RestRunner:
    """Step 2 through the cluster's REST API, polling the task with a growing interval."""

    kind = "rest"

    def __init__(
        self,
        client: ClusterDatabases,
        *,
        timeout: float = 300.0,
        first_poll: float = 0.02,
        max_poll: float = 1.0,
        clock: Monotonic = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.first_poll = first_poll
        self.max_poll = max_poll
        self._clock = clock
        self._sleep = sleep

    def warm(self, guid: str) -> None:
        """GET /v1/crdbs/<guid>: the CRDB is still there, and a pooled connection is open."""
        try:
            self.client.crdb(guid)
        except ClusterError as exc:
            logger.debug("CRDB %s: %s", guid, exc)

    def update(self, guid: str, *, on_sent: Callable[[], None]) -> UpdateResult:
        on_sent()
        return self.apply(guid, {"force_update": True})

    def apply(self, guid: str, body: Mapping[str, Any]) -> UpdateResult:
        """POST /v1/crdbs/<guid>/updates with a modify_request ``body``, then poll its task
        (GET /v1/crdb_tasks/<id>) until it ends."""
        task = self._post(guid, body)
        logger.debug("CRDB %s: task %s %s", guid, task.id, task.status)
        return self._wait(guid, task)

    def _post(self, guid: str, body: Mapping[str, Any]) -> CrdbTask:
        """POST the update with an ``X-Task-ID`` of ours. When the answer is lost (a timeout,
        a dropped connection, a 5xx) the task is looked up by that ID and polled rather than
        posted twice; only when the cluster does not know the ID after a few looks is the
        same request (same ID) sent once more."""
        task_id = new_task_id()
        for attempt in range(2):
            try:
                return self.client.crdb_update(guid, body, task_id=task_id)
            except ClusterError as exc:
                if not exc.retryable or attempt == 1:
                    raise FollowUpError(
                        f"POST /v1/crdbs/{guid}/updates failed: {exc}", cluster=self.client.name
                    ) from exc
                logger.warning(
                    "CRDB %s: %s; looking for task %s before sending again", guid, exc, task_id
                )
            found = self._find_task(task_id)
            if found is not None:
                return found
        raise AssertionError("unreachable")  # pragma: no cover

    def _find_task(self, task_id: str) -> CrdbTask | None:
        delay = self.first_poll
        for _ in range(3):
            try:
                return self.client.crdb_task(task_id)
            except ClusterError as exc:
                if exc.status != 404 and not exc.retryable:
                    raise FollowUpError(f"task {task_id}: {exc}", cluster=self.client.name) from exc
            self._sleep(delay)
            delay = min(delay * 4, self.max_poll)
        return None

    def _wait(self, guid: str, task: CrdbTask) -> UpdateResult:
        deadline = self._clock() + self.timeout
        delay = self.first_poll
        while not task.done:
            if self._clock() >= deadline:
                raise FollowUpError(
                    f"task {task.id} of CRDB {guid} did not finish within {self.timeout:g}s "
                    f"(last status {task.status})",
                    cluster=self.client.name,
                )
            self._sleep(delay)
            delay = min(delay * 1.5, self.max_poll)
            try:
                task = self.client.crdb_task(task.id)
            except ClusterError as exc:
                if exc.status == 404 or not exc.retryable:
                    raise FollowUpError(
                        f"task {task.id} of CRDB {guid}: {exc}", cluster=self.client.name
                    ) from exc
                logger.warning("CRDB %s: polling task %s: %s", guid, task.id, exc)
        if task.status == "failed":
            raise FollowUpError(
                f"task {task.id} of CRDB {guid} failed: {_task_errors(task)}",
                cluster=self.client.name,
            )
        return UpdateResult(guid, task.id, task.status)


def _task_errors(task: CrdbTask) -> str:
    return "; ".join(task.errors) or "no error details"


# -- crdb-cli output -------------------------------------------------------------------------


@dataclass(frozen=True)
class CliOutcome:
    task_id: str | None
    statuses: tuple[str, ...]  # every status reached, in order

    @property
    def final(self) -> str | None:
        return self.statuses[-1] if self.statuses else None


def parse_crdb_cli_output(text: str) -> CliOutcome:
    """``Task <id> created`` and the ``---> Status changed: a -> b`` lines of crdb-cli."""
    created = _TASK_CREATED.search(text)
    statuses: list[str] = []
    for match in _STATUS_CHANGED.finditer(text):
        if not statuses:
            statuses.append(match.group(1))
        statuses.append(match.group(2))
    return CliOutcome(created.group(1) if created else None, tuple(statuses))


def _cli_result(guid: str, command: Sequence[str], code: int, output: str) -> UpdateResult:
    outcome = parse_crdb_cli_output(output)
    shown = " ".join(command)
    tail = output.strip()[-OUTPUT_TAIL:]
    if code != 0:
        raise FollowUpError(f"`{shown}` exited {code}; output:\n{tail}")
    if outcome.final == "failed":
        raise FollowUpError(f"`{shown}`: task {outcome.task_id} failed; output:\n{tail}")
    if outcome.task_id is None or outcome.final != "finished":
        raise FollowUpError(
            f"`{shown}` exited 0 without a finished task "
            f"(task {outcome.task_id}, last status {outcome.final}); output:\n{tail}"
        )
    return UpdateResult(guid, outcome.task_id, "finished", output)


# -- crdb-cli, local -------------------------------------------------------------------------


class CrdbCliRunner:
    """Step 2 with the local ``crdb-cli`` binary; waits for it (it waits for the task)."""

    kind = "crdb-cli"

    def __init__(self, path: str, *, timeout: float = 300.0) -> None:
        self.path = path
        self.timeout = timeout

    def warm(self, guid: str) -> None:
        return None

    def update(self, guid: str, *, on_sent: Callable[[], None]) -> UpdateResult:
        command = crdb_cli_command(self.path, guid)
        on_sent()
        try:
            proc = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = exc.output if isinstance(exc.output, str) else ""
            raise FollowUpError(
                f"`{' '.join(command)}` did not end within {self.timeout:g}s; output:\n"
                f"{output.strip()[-OUTPUT_TAIL:]}"
            ) from exc
        except OSError as exc:
            raise FollowUpError(f"cannot run {self.path}: {exc.strerror or exc}") from exc
        return _cli_result(guid, command, proc.returncode, proc.stdout or "")


# -- crdb-cli in a container -----------------------------------------------------------------


def docker_module() -> Any:
    """The ``docker`` package, an optional extra imported only by the docker runner."""
    try:
        import docker
    except ImportError as exc:
        raise FollowUpError(
            "crdb_update = \"docker\" needs the docker package: pip install 'vault-bridge[docker]'"
        ) from exc
    return docker


class DockerExec:
    """The one adapter for the Docker Engine API (``docker`` package): ``docker exec``.

    The client is made on first use (``docker_host``, else the environment: ``DOCKER_HOST``
    or the local socket) and shared by the threads of one follow-up.
    """

    def __init__(self, container: str, host: str | None = None, *, timeout: float = 300.0) -> None:
        self.container = container
        self.host = host
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def _docker(self) -> Any:
        with self._lock:
            if self._client is None:
                docker = docker_module()
                try:
                    if self.host:
                        self._client = docker.DockerClient(base_url=self.host, timeout=self.timeout)
                    else:
                        self._client = docker.from_env(timeout=self.timeout)
                except docker.errors.DockerException as exc:
                    raise FollowUpError(f"cannot reach the Docker daemon: {exc}") from exc
            return self._client

    def container_ready(self) -> None:
        """GET /containers/<name>/json"""
        docker = docker_module()

        try:
            self._docker().containers.get(self.container)
        except docker.errors.DockerException as exc:
            raise FollowUpError(f"container {self.container!r}: {exc}") from exc

    def run(self, command: Sequence[str]) -> tuple[int, str]:
        """POST /containers/<id>/exec + POST /exec/<id>/start: exit code and output."""
        docker = docker_module()

        client = self._docker()
        try:
            container = client.containers.get(self.container)
            result = container.exec_run(list(command), stdout=True, stderr=True, demux=False)
        except docker.errors.NotFound as exc:
            raise FollowUpError(f"no container {self.container!r}: {exc.explanation}") from exc
        except docker.errors.DockerException as exc:
            raise FollowUpError(f"docker exec in {self.container!r} failed: {exc}") from exc
        except OSError as exc:  # the daemon went away mid-call (requests' errors are OSErrors)
            raise FollowUpError(f"docker exec in {self.container!r} failed: {exc}") from exc
        output = result.output.decode(errors="replace") if result.output else ""
        return int(result.exit_code if result.exit_code is not None else -1), output

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class DockerRunner:
    """Step 2 with ``crdb-cli`` inside a Redis Enterprise node container."""

    kind = "docker"

    def __init__(self, docker: DockerExec, path: str) -> None:
        self.docker = docker
        self.path = path

    def warm(self, guid: str) -> None:
        """Connects to the daemon and finds the container before step 1."""
        try:
            self.docker.container_ready()
        except FollowUpError as exc:
            logger.debug("docker: %s", exc)

    def update(self, guid: str, *, on_sent: Callable[[], None]) -> UpdateResult:
        command = crdb_cli_command(self.path, guid)
        on_sent()
        code, output = self.docker.run(command)
        return _cli_result(guid, [f"docker exec {self.docker.container}", *command], code, output)


def runner_for(
    settings: ClusterSettings,
    client: ClusterDatabases,
    *,
    timeout: float = 300.0,
    clock: Monotonic = time.monotonic,
    sleep: Sleep = time.sleep,
) -> CrdbRunner | None:
    """The runner a cluster's ``crdb_update`` names; None for ``none``."""
    if settings.crdb_update == "rest":
        return RestRunner(client, timeout=timeout, clock=clock, sleep=sleep)
    if settings.crdb_update == "crdb-cli":
        return CrdbCliRunner(settings.crdb_cli_path, timeout=timeout)
    if settings.crdb_update == "docker":
        assert settings.docker_container  # checked by the configuration
        return DockerRunner(
            DockerExec(settings.docker_container, settings.docker_host, timeout=timeout),
            settings.crdb_cli_path,
        )
    return None
