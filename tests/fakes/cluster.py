"""A Redis Enterprise cluster in memory: the certificates it holds and serves, its databases,
CRDBs and update tasks; every call recorded, failures queued per endpoint."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vault_bridge.adapters.ports import UpdateResult
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.install import CertUpload
from vault_bridge.errors import ClusterError, VerificationError
from vault_bridge.models.certificates import CertificateInfo, CertName, InstalledCertificate
from vault_bridge.models.cluster import (
    BULK_MIN_VERSION,
    REPLICA_STATUS_ONLY,
    Bdb,
    Crdb,
    CrdbTask,
    parse_version,
)

# objects/bdb/syncer_sources.md: the status fields a PUT may not carry
READ_ONLY_REPLICA_FIELDS = REPLICA_STATUS_ONLY

_task_ids = itertools.count(1)


class FakeCluster:
    """Implements :class:`vault_bridge.adapters.ports.ClusterApi`.

    - ``fail["PUT /v1/cluster/certificates"]`` (any ``"<verb> <path>"``, with ``<guid>`` /
      ``<uid>`` / ``<id>`` for the parts that vary) is a queue of errors: each call raises the
      next one (``None``: that call succeeds), then calls succeed again;
    - ``reject``: certificate names the cluster refuses as invalid (HTTP 400); one of them
      in a bulk request rejects the whole request, as the documented endpoint does;
    - ``ignore_installs``: installs answer 200 but change nothing (a cluster that lies);
    - ``serve_lag``: the TLS listener keeps serving the old leaf for that many probes;
    - ``task_scripts[guid]``: the statuses successive polls of each update task report, one
      script per ``crdb_update`` (the last one repeats); default ``["finished"]``;
    - ``busy[guid]``: a task of that CRDB already in flight for that many ``crdb_tasks``.
    """

    def __init__(
        self,
        name: str,
        *,
        version: str = "7.22.2-14",
        events: list[str] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.events: list[str] = events if events is not None else []
        self.installed: dict[str, str] = {}
        self.served_pems: dict[str, str] = {}
        self.fail: dict[str, list[ClusterError | None]] = {}
        self.reject: set[str] = set()
        self.ignore_installs = False
        self.serve_lag = 0
        self.trusted: list[str] = []
        self.reserved = 0
        self.closed = False
        self.crdb_list: list[Crdb] = []
        self.bdb_json: dict[int, dict[str, Any]] = {}
        self.tasks: dict[str, CrdbTask] = {}
        self.task_scripts: dict[str, list[list[str]]] = {}
        self.update_bodies: list[dict[str, Any]] = []
        self.busy: dict[str, int] = {}
        self.updates: list[str] = []  # GUIDs, one per POST /v1/crdbs/<guid>/updates
        self._polls: dict[str, list[str]] = {}
        self._last_read: dict[str, InstalledCertificate] | None = None
        self._lock = threading.Lock()

    # -- plumbing ----------------------------------------------------------------------------

    def _call(self, endpoint: str, certificate: str | None = None) -> None:
        with self._lock:
            self.events.append(f"{self.name}: {endpoint}")
            queue = self.fail.get(endpoint)
            error = queue.pop(0) if queue else None
        if error is not None:
            raise error

    def error(self, status: int, message: str, certificate: str | None = None) -> ClusterError:
        return ClusterError(
            message,
            cluster=self.name,
            certificate=certificate,
            status=status,
            retryable=status in (409, 500, 503),
        )

    def install_pem(self, name: str, pem: str) -> None:
        """Put a certificate in place without a request (how the test finds the cluster)."""
        self.installed[name] = pem
        self.served_pems[name] = pem

    def served(self, name: str) -> CertificateInfo:
        """What the TLS listener of ``name`` presents (see ``serve_lag``)."""
        with self._lock:
            if self.serve_lag > 0:
                self.serve_lag -= 1
                pem = self.served_pems.get(name)
            else:
                pem = self.installed.get(name)
                if pem is not None:
                    self.served_pems[name] = pem
        if pem is None:
            raise VerificationError(f"{self.name} serves no {name} certificate")
        return CertificateInfo.from_pem(pem)

    # -- ClusterCertificates -----------------------------------------------------------------

    def set_trust(self, extra_ca_pems: Sequence[str]) -> None:
        self.trusted = list(extra_ca_pems)

    @property
    def backoff(self) -> float:
        return 0.0

    def certificates(self) -> dict[str, InstalledCertificate]:
        """GET /v1/cluster/certificates"""
        self._call("GET /v1/cluster/certificates")
        out = {n: InstalledCertificate.from_pem(n, p) for n, p in self.installed.items()}
        self._last_read = dict(out)
        return out

    def last_certificates(self) -> dict[str, InstalledCertificate]:
        """The last read until an install request or :meth:`forget_certificates`."""
        if self._last_read is None:
            return self.certificates()
        return dict(self._last_read)

    def forget_certificates(self) -> None:
        self._last_read = None

    def lowest_version(self) -> tuple[int, ...]:
        """GET /v1/nodes"""
        self._call("GET /v1/nodes")
        return parse_version(self.version)

    def _apply(self, items: Sequence[CertUpload]) -> None:
        if not self.ignore_installs:
            for item in items:
                self.installed[item.name] = item.certificate

    def put_certificates(self, items: Sequence[CertUpload]) -> None:
        """PUT /v1/cluster/certificates: all items or none."""
        names = ",".join(i.name for i in items)
        self._last_read = None
        self._call("PUT /v1/cluster/certificates", names)
        if parse_version(self.version) < BULK_MIN_VERSION:
            raise self.error(404, "no such endpoint", names)
        internode = {CertName(i.name).internode for i in items}
        if len(internode) > 1:
            raise self.error(400, "internode certificates go in a request of their own", names)
        rejected = [i.name for i in items if i.name in self.reject]
        if rejected:
            raise self.error(400, "the cluster rejected the certificate as invalid", names)
        self._apply(items)

    def update_cert(self, item: CertUpload) -> None:
        """PUT /v1/cluster/update_cert"""
        self._last_read = None
        self._call("PUT /v1/cluster/update_cert", item.name)
        if item.name in self.reject:
            raise self.error(400, "the cluster rejected the certificate as invalid", item.name)
        self._apply([item])

    # -- ClusterDatabases --------------------------------------------------------------------

    def reserve_connections(self, count: int) -> None:
        self.reserved = max(self.reserved, count)

    def crdbs(self) -> list[Crdb]:
        """GET /v1/crdbs"""
        self._call("GET /v1/crdbs")
        return list(self.crdb_list)

    def crdb(self, guid: str) -> Crdb:
        """GET /v1/crdbs/<guid>"""
        self._call("GET /v1/crdbs/<guid>")
        for crdb in self.crdb_list:
            if crdb.guid == guid:
                return crdb
        raise self.error(404, f"no CRDB {guid}")

    def crdb_tasks(self) -> list[CrdbTask]:
        """GET /v1/crdb_tasks"""
        self._call("GET /v1/crdb_tasks")
        with self._lock:
            tasks = list(self.tasks.values())
            for guid, left in list(self.busy.items()):
                if left > 0:
                    tasks.append(CrdbTask(f"busy-{guid}", guid, "started"))
                    self.busy[guid] = left - 1
        return tasks

    def crdb_task(self, task_id: str) -> CrdbTask:
        """GET /v1/crdb_tasks/<id>: the task moves one status along its script per poll."""
        self._call("GET /v1/crdb_tasks/<id>")
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                raise self.error(404, f"no task {task_id}")
            script = self._polls[task_id]
            status = script.pop(0) if len(script) > 1 else script[0]
            errors = ("east: crdt_error: the update failed",) if status == "failed" else ()
            task = CrdbTask(task.id, task.crdb_guid, status, errors)
            self.tasks[task_id] = task
        return task

    def crdb_update(
        self, guid: str, body: Mapping[str, Any] | None = None, *, task_id: str | None = None
    ) -> CrdbTask:
        """POST /v1/crdbs/<guid>/updates (default {"force_update": true}); ``task_id`` names
        the task (X-Task-ID) and a repeat of it returns the same task."""
        self._call("POST /v1/crdbs/<guid>/updates")
        with self._lock:
            if not any(c.guid == guid for c in self.crdb_list):
                raise self.error(404, f"no CRDB {guid}")
            if task_id is not None and task_id in self.tasks:
                return self.tasks[task_id]
            self.updates.append(guid)
            self.update_bodies.append(dict(body) if body is not None else {"force_update": True})
            scripts = self.task_scripts.get(guid) or [["finished"]]
            script = list(scripts.pop(0) if len(scripts) > 1 else scripts[0])
            task = CrdbTask(task_id or f"task-{next(_task_ids)}", guid, "queued")
            self.tasks[task.id] = task
            self._polls[task.id] = script
        return task

    def bdbs(self) -> list[Bdb]:
        """GET /v1/bdbs"""
        self._call("GET /v1/bdbs")
        return [Bdb.from_json(b) for b in self.bdb_json.values()]

    def bdb(self, uid: int) -> Bdb:
        """GET /v1/bdbs/<uid>"""
        self._call("GET /v1/bdbs/<uid>")
        if uid not in self.bdb_json:
            raise self.error(404, f"no database {uid}")
        return Bdb.from_json(self.bdb_json[uid])

    def update_bdb(self, uid: int, changes: Mapping[str, Any]) -> Bdb:
        """PUT /v1/bdbs/<uid>: read-only fields of replica_sources are refused (400)."""
        self._call("PUT /v1/bdbs/<uid>")
        if uid not in self.bdb_json:
            raise self.error(404, f"no database {uid}")
        for entry in changes.get("replica_sources") or ():
            if READ_ONLY_REPLICA_FIELDS & set(entry):
                raise self.error(400, "replica_sources: read-only field")
        self.bdb_json[uid].update(dict(changes))
        return Bdb.from_json(self.bdb_json[uid])

    def close(self) -> None:
        self.closed = True


def add_crdb(guid: str, name: str, clusters: Sequence[FakeCluster], *, uid: int = 1) -> None:
    """An Active-Active database with an instance (database ``uid``) on each of ``clusters``."""
    instances = [
        {
            "id": index + 1,
            "cluster": {"name": c.name, "url": f"https://{c.name}.example.com:9443"},
            "db_uid": str(uid),
        }
        for index, c in enumerate(clusters)
    ]
    for cluster in clusters:
        cluster.crdb_list.append(
            Crdb.from_json(
                {
                    "guid": guid,
                    "name": name,
                    "instances": instances,
                    "local_databases": [{"bdb_uid": str(uid)}],
                }
            )
        )
        cluster.bdb_json[uid] = {"uid": uid, "name": name, "crdt": True, "crdt_guid": guid}


class FakeProbe:
    """Implements :class:`vault_bridge.adapters.ports.TlsProbe` over fake clusters: each
    configured endpoint serves what its cluster's listener presents."""

    def __init__(self, settings: Settings, clusters: Mapping[str, FakeCluster]) -> None:
        self.routes: dict[str, tuple[FakeCluster, str]] = {}
        for cluster in settings.clusters:
            for name in CertName:
                endpoint = cluster.endpoint_for(name)
                if endpoint is not None and cluster.name in clusters:
                    self.routes[endpoint] = (clusters[cluster.name], name.value)
        self.probes: list[str] = []

    def __call__(self, endpoint: str, /) -> CertificateInfo:
        self.probes.append(endpoint)
        if endpoint not in self.routes:
            raise VerificationError(f"TLS handshake with {endpoint} failed: connection refused")
        cluster, name = self.routes[endpoint]
        return cluster.served(name)


class FakeRunner:
    """Implements :class:`vault_bridge.adapters.ports.CrdbRunner` (say, ``crdb-cli``):
    records each update; ``fail`` queues errors raised by successive updates."""

    kind = "crdb-cli"

    def __init__(self, events: list[str] | None = None) -> None:
        self.events: list[str] = events if events is not None else []
        self.warmed: list[str] = []
        self.updated: list[str] = []
        self.fail: list[Exception] = []

    def warm(self, guid: str) -> None:
        self.warmed.append(guid)

    def update(self, guid: str, *, on_sent: Callable[[], None]) -> UpdateResult:
        on_sent()
        self.events.append(f"runner: crdb update --crdb-guid {guid} --force")
        self.updated.append(guid)
        if self.fail:
            raise self.fail.pop(0)
        return UpdateResult(guid, f"cli-task-{len(self.updated)}", "finished")
