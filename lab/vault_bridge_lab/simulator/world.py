"""The databases of simulated clusters: Active-Active (CRDBs), Replica Of, update tasks, sync health.

One :class:`DatabaseWorld` can be shared by several :class:`SimulatedCluster` instances in one
process (``SimulatedCluster(..., world=world)``), so that an Active-Active database has an
instance on each of them and a Replica Of link can join a database on one cluster to a database
on another. The REST handlers of each cluster read and change this world.

Sync health, which makes the outage of a certificate change visible:

- an Active-Active database (CRDB) remembers the ``proxy`` and ``syncer`` certificates of every
  participating cluster as of its last ``crdb update`` (taken when the task *starts*). While one
  of them differs from what the cluster has installed, the CRDB is *rejecting*: its outage
  started when the install happened and ends when an update task that saw every current
  certificate *finishes*;
- a Replica Of link (a destination database's ``replica_sources`` entry) is *rejecting* while
  its ``server_cert`` is not the source cluster's current ``proxy`` certificate, or while the
  source database enforces client authentication and its ``authentication_ssl_client_certs``
  lack the destination cluster's current ``syncer`` certificate. Once healthy again, it reports
  ``syncing`` for ``resync_time`` seconds, then ``in-sync``.

Every outage is recorded (:meth:`DatabaseWorld.outages`) with ``time.monotonic()`` start and end,
the clock :class:`RecordedRequest` uses too. Task progress is computed from the clock: a task is
``queued`` for ``queued_time`` seconds, ``started`` for ``run_time`` seconds, then ``finished``
(or ``failed``, when injected with :meth:`DatabaseWorld.fail_tasks`); its effects are applied in
time order whenever the world is read or changed, so no thread is needed.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vault_bridge_lab.simulator.databases import (
    Bdb,
    Crdb,
    DatabaseError,
    Outage,
    OutageKind,
    Task,
    check_client_certs,
    check_sources,
    leaf_fingerprint,
    link_key,
)
from vault_bridge_lab.simulator.routing import ApiError
from vault_bridge_lab.simulator.schemas import (
    BDB_UPDATE,
    CRDB_DB_CONFIG_PER_INSTANCE,
    CRDB_INSTANCE,
    CRDB_MODIFY_REQUEST,
    CRDB_OBJECT,
)

if TYPE_CHECKING:
    from vault_bridge_lab.simulator.cluster import SimulatedCluster


class DatabaseWorld:
    """CRDBs, bdbs, CRDB tasks and sync health shared by the simulated clusters attached to it."""

    def __init__(
        self,
        *,
        queued_time: float = 0.005,
        run_time: float = 0.02,
        resync_time: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queued_time = queued_time
        self.run_time = run_time
        self.resync_time = resync_time
        self._clock = clock
        self._lock = threading.RLock()
        self._clusters: dict[str, SimulatedCluster] = {}
        self._crdbs: dict[str, Crdb] = {}
        self._bdbs: dict[tuple[str, int], Bdb] = {}
        self._tasks: dict[str, Task] = {}
        self._failures: dict[str | None, list[tuple[str, str]]] = {}
        self._link_outages: dict[str, Outage] = {}
        self._healthy_since: dict[str, float] = {}
        self._outages: list[Outage] = []
        self._ports = itertools.count(12000)
        self._uids: dict[str, Iterator[int]] = {}
        # UNDOCUMENTED whether GET /v1/bdbs returns a replica source's client_key: True
        # simulates a cluster that leaves it out.
        self.hide_client_key = False
        self.update_requests = 0  # POST /v1/crdbs/<guid>/updates that started a task

    # ---- clusters

    def attach(self, cluster: SimulatedCluster) -> None:
        with self._lock:
            other = self._clusters.get(cluster.name)
            if other is not None and other is not cluster:
                raise ValueError(f"a cluster named {cluster.name!r} is attached already")
            self._clusters[cluster.name] = cluster
            self._uids.setdefault(cluster.name, itertools.count(1))

    def _certs(self, cluster: str) -> tuple[str | None, str | None]:
        """(proxy fp, syncer fp) installed on ``cluster`` now."""
        sim = self._clusters[cluster]
        return (
            leaf_fingerprint(sim.installed_pem("proxy")),
            leaf_fingerprint(sim.installed_pem("syncer")),
        )

    # ---- test set-up

    def add_crdb(
        self, name: str, participants: Sequence[SimulatedCluster], *, guid: str | None = None
    ) -> str:
        """An Active-Active database with an instance (a bdb) on each participant; in sync."""
        if not participants:
            raise ValueError("a CRDB has at least one participating cluster")
        for sim in participants:
            self.attach(sim)
        with self._lock:
            guid = guid or str(uuid.uuid4())
            if guid in self._crdbs:
                raise ValueError(f"CRDB {guid} exists already")
            uids = {}
            for sim in participants:
                uids[sim.name] = self._new_bdb(
                    sim.name, name, {"crdt": True, "crdt_guid": guid, "tls_mode": "enabled"}
                ).uid
            names = [sim.name for sim in participants]
            self._crdbs[guid] = Crdb(guid, name, names, uids, {c: self._certs(c) for c in names})
            return guid

    def add_bdb(
        self,
        cluster: SimulatedCluster,
        name: str,
        *,
        replica_of: Sequence[tuple[SimulatedCluster, int]] = (),
        enforce_client_authentication: bool = True,
        client_certs: Sequence[str] = (),
        source_fields: Mapping[str, Any] | None = None,
    ) -> int:
        """A database on ``cluster``; ``replica_of`` makes it a Replica Of destination of each
        ``(source cluster, source uid)``: a ``replica_sources`` entry (TLS, the source cluster's
        proxy certificate as ``server_cert``, ``source_fields`` merged in), and the destination
        cluster's syncer certificate added to the source's ``authentication_ssl_client_certs``.
        Returns the new uid."""
        self.attach(cluster)
        with self._lock:
            bdb = self._new_bdb(
                cluster.name,
                name,
                {
                    "tls_mode": "enabled",
                    "enforce_client_authentication": "enabled"
                    if enforce_client_authentication
                    else "disabled",
                    "authentication_ssl_client_certs": [{"client_cert": c} for c in client_certs],
                },
            )
            sources = []
            for index, (source_sim, source_uid) in enumerate(replica_of, start=1):
                self.attach(source_sim)
                source = self._bdb(source_sim.name, source_uid)
                entry: dict[str, Any] = {
                    "uid": index,
                    "uri": f"redis://admin:{uuid.uuid4().hex}@{source_sim.name}.sim:{source.port}",
                    "encryption": True,
                    "server_cert": source_sim.installed_pem("proxy"),
                    "client_cert": cluster.installed_pem("syncer"),
                    "client_key": "",
                    "compression": 0,
                    "replication_tls_sni": f"{source_sim.name}.sim",
                    **(source_fields or {}),
                }
                sources.append(entry)
                certs = source.fields.setdefault("authentication_ssl_client_certs", [])
                syncer = cluster.installed_pem("syncer")
                if leaf_fingerprint(syncer) not in {
                    leaf_fingerprint(c["client_cert"]) for c in certs
                }:
                    certs.append({"client_cert": syncer})
                source_crdb = self._crdbs.get(str(source.fields.get("crdt_guid") or ""))
                if source_crdb is not None:  # an Active-Active instance: the CRDB holds them
                    source_crdb.instance_configs.setdefault(source.cluster, {})[
                        "authentication_ssl_client_certs"
                    ] = [dict(c) for c in certs]
            bdb.fields["replica_sources"] = sources
            self._evaluate(self._clock())
            return bdb.uid

    def _new_bdb(self, cluster: str, name: str, fields: dict[str, Any]) -> Bdb:
        uid = next(self._uids[cluster])
        bdb = Bdb(cluster, uid, name, next(self._ports), {"crdt": False, **fields})
        self._bdbs[(cluster, uid)] = bdb
        return bdb

    def _bdb(self, cluster: str, uid: int) -> Bdb:
        try:
            return self._bdbs[(cluster, uid)]
        except KeyError:
            raise DatabaseError(404, "db_not_exist", f"no database {uid} on {cluster}") from None

    def fail_tasks(
        self,
        guid: str | None = None,
        *,
        times: int = 1,
        error_code: str = "sync_failed",
        description: str = "injected task failure",
    ) -> None:
        """The next ``times`` update tasks (of ``guid``, or of any CRDB) end ``failed``."""
        with self._lock:
            self._failures.setdefault(guid, []).extend([(error_code, description)] * times)

    def start_task(
        self, guid: str, *, via: SimulatedCluster, run_time: float, force: bool = True
    ) -> str:
        """An update task somebody else started (e.g. an operator), running ``run_time`` s."""
        with self._lock:
            return str(self._create_task(guid, via.name, force=force, run_time=run_time)["id"])

    # ---- reading for tests

    def outages(self, kind: OutageKind | None = None) -> list[Outage]:
        """Every outage so far, oldest first (ongoing ones have ``end`` None)."""
        with self._lock:
            self._advance(self._clock())
            return [o for o in self._outages if kind is None or o.kind == kind]

    def rejecting(self) -> list[str]:
        """Keys of the CRDBs and links rejecting sync now."""
        return [o.key for o in self.outages() if o.end is None]

    def tasks(self, guid: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            now = self._clock()
            self._advance(now)
            return [
                self._task_json(t, now)
                for t in self._tasks.values()
                if guid is None or t.crdb_guid == guid
            ]

    def crdb_in_sync(self, guid: str) -> bool:
        with self._lock:
            self._advance(self._clock())
            return self._crdbs[guid].outage is None

    def bdb_json(self, cluster: str, uid: int) -> dict[str, Any]:
        with self._lock:
            self._advance(self._clock())
            return self._bdb_json(self._bdb(cluster, uid), self._clock())

    # ---- the REST handlers' side

    def crdbs_json(self, cluster: str) -> list[dict[str, Any]]:
        """GET /v1/crdbs on ``cluster``: the CRDBs it participates in."""
        with self._lock:
            self._advance(self._clock())
            return [
                self._crdb_json(c, cluster) for c in self._crdbs.values() if cluster in c.db_uids
            ]

    def crdb_json(self, cluster: str, guid: str) -> dict[str, Any]:
        with self._lock:
            crdb = self._crdbs.get(guid)
            if crdb is None or cluster not in crdb.db_uids:
                raise DatabaseError(404, "crdb_not_found", f"no CRDB {guid}")
            return self._crdb_json(crdb, cluster)

    def _crdb_json(self, crdb: Crdb, cluster: str) -> dict[str, Any]:
        instances = []
        for index, name in enumerate(crdb.participants, start=1):
            sim = self._clusters[name]
            instances.append(
                {
                    "id": index,
                    "cluster": {"name": name, "url": sim.api_url if sim._servers else ""},
                    "db_uid": str(crdb.db_uids[name]),
                }
            )
        local_id = crdb.participants.index(cluster) + 1
        return {
            "guid": crdb.guid,
            "name": crdb.name,
            "encryption": True,
            "instances": instances,
            "local_databases": [{"bdb_uid": str(crdb.db_uids[cluster]), "id": local_id}],
        }

    def create_update(
        self,
        cluster: str,
        guid: str,
        body: Any,
        *,
        task_id: str | None = None,
        now_utc: datetime | None = None,
    ) -> dict[str, Any]:
        """POST /v1/crdbs/<guid>/updates: a modify_request; ``task_id`` from ``X-Task-ID``
        (requests/crdbs/updates.md) names the task. UNDOCUMENTED what a second request with
        the ID of an existing task does: here it returns that task and starts nothing."""
        try:
            CRDB_MODIFY_REQUEST.check(body, "the body")
        except ApiError as err:
            raise DatabaseError(err.status, err.error_code, err.description) from err
        force = body.get("force_update", False)
        if not isinstance(force, bool):
            raise DatabaseError(400, "invalid_schema", "'force_update' must be a boolean")
        with self._lock:
            crdb = self._crdbs.get(guid)
            if crdb is None or cluster not in crdb.db_uids:
                raise DatabaseError(404, "crdb_not_found", f"no CRDB {guid}")
            if task_id is not None and task_id in self._tasks:
                now = self._clock()
                self._advance(now)
                return self._task_json(self._tasks[task_id], now)
            if "crdb" in body:
                self._apply_instance_configs(crdb, body["crdb"], now_utc or datetime.now(UTC))
            self.update_requests += 1
            return self._create_task(
                guid, cluster, force=force, run_time=self.run_time, task_id=task_id
            )

    def _apply_instance_configs(self, crdb: Crdb, value: Any, now_utc: datetime) -> None:
        """``crdb.instances[].db_config`` of a modify_request: per-instance settings
        (objects/crdb/database_config.md) applied to that instance's bdb."""
        try:
            CRDB_OBJECT.check(value, "crdb")
            instances = value.get("instances") or []
            if not isinstance(instances, list):
                raise DatabaseError(400, "invalid_schema", "crdb.instances must be a list")
            for index, instance in enumerate(instances):
                CRDB_INSTANCE.check(instance, f"crdb.instances[{index}]")
                config = CRDB_DB_CONFIG_PER_INSTANCE.check(
                    instance.get("db_config") or {}, f"crdb.instances[{index}].db_config"
                )
                member = _instance_cluster(crdb, instance["id"])
                bdb = self._bdb(member, crdb.db_uids[member])
                config = dict(config)
                own = {k: config.pop(k) for k in ("cert", "private_key") if k in config}
                if own:
                    # the instance's own server certificate (cert with its private_key,
                    # objects/crdb/database_config.md): checked like the bdb endpoint's, then
                    # served by that instance's endpoint; never echoed in a GET
                    sim = self._clusters[member]
                    checked = sim.db_certs.check(own, now=now_utc, extra_check=lambda _: None)
                    sim._set_db_certificate(crdb.db_uids[member], checked)
                for key, field_value in config.items():
                    if key == "authentication_ssl_client_certs":
                        field_value = check_client_certs(field_value, now_utc)
                    bdb.fields[key] = field_value
                    crdb.instance_configs.setdefault(member, {})[key] = field_value
        except ApiError as err:
            raise DatabaseError(err.status, err.error_code, err.description) from err
        self._evaluate(self._clock())

    def _create_task(
        self, guid: str, cluster: str, *, force: bool, run_time: float, task_id: str | None = None
    ) -> dict[str, Any]:
        now = self._clock()
        self._advance(now)
        queue = self._failures.get(guid) or self._failures.get(None) or []
        fail = queue.pop(0) if queue else None
        task = Task(
            task_id or str(uuid.uuid4()),
            guid,
            now,
            self.queued_time,
            run_time,
            force,
            fail,
            cluster,
        )
        self._tasks[task.id] = task
        return self._task_json(task, now)

    def tasks_json(self, cluster: str) -> list[dict[str, Any]]:
        """GET /v1/crdb_tasks on ``cluster``: tasks of the CRDBs it participates in."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            return [
                self._task_json(t, now)
                for t in self._tasks.values()
                if cluster in self._crdbs[t.crdb_guid].db_uids
            ]

    def task_json(self, cluster: str, task_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            self._advance(now)
            task = self._tasks.get(task_id)
            if task is None or cluster not in self._crdbs[task.crdb_guid].db_uids:
                raise DatabaseError(404, "task_not_found", f"no CRDB task {task_id}")
            return self._task_json(task, now)

    def _task_json(self, task: Task, now: float) -> dict[str, Any]:
        status = task.status(now)
        out: dict[str, Any] = {
            "id": task.id,
            "crdb_guid": task.crdb_guid,
            "operation": "update_crdb",
            "status": status,
        }
        if status == "failed":
            out["errors"] = list(task.errors)
        return out

    def bdbs_json(self, cluster: str) -> list[dict[str, Any]]:
        with self._lock:
            now = self._clock()
            self._advance(now)
            return [self._bdb_json(b, now) for b in self._bdbs.values() if b.cluster == cluster]

    def _bdb_json(self, bdb: Bdb, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"uid": bdb.uid, "name": bdb.name, "port": bdb.port}
        for key, value in bdb.fields.items():
            if key == "replica_sources":
                value = [self._entry_json(bdb, e, now) for e in value]
            elif isinstance(value, list):
                value = [dict(v) if isinstance(v, dict) else v for v in value]
            out[key] = value
        return out

    def _entry_json(self, bdb: Bdb, entry: Mapping[str, Any], now: float) -> dict[str, Any]:
        key = link_key(bdb, entry)
        problem = self._link_problem(bdb, entry)
        out = dict(entry)
        if self.hide_client_key:
            out.pop("client_key", None)
        # The status-only fields of objects/bdb/syncer_sources.md, as a real cluster adds them.
        out.update(last_update="2026-01-01T00:00:00Z", rdb_size=0, rdb_transferred=0)
        if problem is not None:
            out.update(status="out-of-sync", last_error=problem, lag=None)
        elif now - self._healthy_since.get(key, -1e18) < self.resync_time:
            out.update(status="syncing", last_error="", lag=None)
        else:
            out.update(status="in-sync", last_error="", lag=0)
        return out

    def update_bdb(self, cluster: str, uid: int, body: Any, now_utc: datetime) -> dict[str, Any]:
        """PUT /v1/bdbs/<uid>: ``replica_sources`` and ``authentication_ssl_client_certs``
        (whole lists) are validated and replace the current ones; other keys are stored."""
        try:
            BDB_UPDATE.check(body, "the body")
        except ApiError as err:
            raise DatabaseError(err.status, err.error_code, err.description) from err
        with self._lock:
            now = self._clock()
            self._advance(now)
            bdb = self._bdb(cluster, uid)
            updates: dict[str, Any] = {}
            for key, value in body.items():
                if key == "replica_sources":
                    updates[key] = check_sources(value, now_utc)
                elif key == "authentication_ssl_client_certs":
                    updates[key] = check_client_certs(value, now_utc)
                else:
                    updates[key] = value
            bdb.fields.update(updates)
            self._evaluate(now)
            return self._bdb_json(bdb, now)

    def advance(self) -> None:
        """Apply what happened up to now (a cluster calls it right before an install)."""
        with self._lock:
            self._advance(self._clock())

    def certificates_changed(self, cluster: str) -> None:
        """Called by a cluster after an install: re-evaluate sync health."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            if cluster in self._clusters:
                self._evaluate(now)

    # ---- the model

    def _advance(self, now: float) -> None:
        """Apply task transitions that happened up to ``now``, in time order."""
        events: list[tuple[float, int, Task]] = []
        for task in self._tasks.values():
            if not task.started_applied and task.starts_at <= now:
                events.append((task.starts_at, 0, task))
            if not task.done_applied and task.ends_at <= now:
                events.append((task.ends_at, 1, task))
        for at, kind, task in sorted(events, key=lambda e: (e[0], e[1])):
            crdb = self._crdbs[task.crdb_guid]
            if kind == 0:
                task.started_applied = True
                task.snapshot = {c: self._certs(c) for c in crdb.participants}
                continue
            task.done_applied = True
            if task.fail is not None:
                code, description = task.fail
                task.errors = [
                    {
                        "cluster_name": task.cluster_name,
                        "error_code": code,
                        "description": description,
                    }
                ]
                continue
            if not task.force and crdb.outage is not None:
                task.fail = ("certificate_mismatch", "certificates changed: use force_update")
                task.errors = [
                    {
                        "cluster_name": task.cluster_name,
                        "error_code": "certificate_mismatch",
                        "description": "participating clusters' certificates changed; "
                        "update with force_update",
                    }
                ]
                continue
            crdb.known = dict(task.snapshot)
            for member, config in crdb.instance_configs.items():
                self._bdb(member, crdb.db_uids[member]).fields.update(
                    {
                        k: [dict(v) for v in value] if isinstance(value, list) else value
                        for k, value in config.items()
                    }
                )
            self._evaluate(at)

    def _evaluate(self, at: float) -> None:
        for crdb in self._crdbs.values():
            stale = [c for c in crdb.participants if crdb.known.get(c) != self._certs(c)]
            self._set(crdb, stale, at)
        for bdb in list(self._bdbs.values()):
            for entry in bdb.fields.get("replica_sources") or []:
                key = link_key(bdb, entry)
                problem = self._link_problem(bdb, entry)
                outage = self._link_outages.get(key)
                if problem is not None and outage is None:
                    outage = Outage("replica", key, bdb.name, problem, at)
                    self._link_outages[key] = outage
                    self._outages.append(outage)
                    self._healthy_since.pop(key, None)
                elif problem is None:
                    if outage is not None:
                        self._end(outage, at)
                        del self._link_outages[key]
                        self._healthy_since[key] = at
                    self._healthy_since.setdefault(key, -1e18)

    def _set(self, crdb: Crdb, stale: list[str], at: float) -> None:
        if stale and crdb.outage is None:
            reason = "certificates changed on " + ", ".join(stale)
            crdb.outage = Outage("crdb", crdb.guid, crdb.name, reason, at)
            self._outages.append(crdb.outage)
        elif not stale and crdb.outage is not None:
            self._end(crdb.outage, at)
            crdb.outage = None

    def _end(self, outage: Outage, at: float) -> None:
        index = self._outages.index(outage)
        ended = Outage(outage.kind, outage.key, outage.name, outage.reason, outage.start, at)
        self._outages[index] = ended

    def _link_problem(self, bdb: Bdb, entry: Mapping[str, Any]) -> str | None:
        source = self._source_of(entry)
        if source is None:
            return None  # a source outside this world: nothing to model
        proxy, _ = self._certs(source.cluster)
        own = self._clusters[source.cluster].db_certs.get(source.uid)
        if own is not None:  # a database with a certificate of its own serves that one
            proxy = leaf_fingerprint(own.chain_pem)
        if leaf_fingerprint(str(entry.get("server_cert") or "")) != proxy:
            return "the source's proxy certificate is not the server_cert of the replica"
        if source.fields.get("enforce_client_authentication") == "enabled":
            _, syncer = self._certs(bdb.cluster)
            allowed = {
                leaf_fingerprint(str(c.get("client_cert") or ""))
                for c in source.fields.get("authentication_ssl_client_certs") or []
            }
            if syncer not in allowed:
                return "the source rejects the replica's syncer certificate"
        return None

    def _source_of(self, entry: Mapping[str, Any]) -> Bdb | None:
        uri = str(entry.get("uri") or "")
        host_port = uri.rpartition("@")[2]
        host, _, port = host_port.rpartition(":")
        cluster = host.removesuffix(".sim")
        for bdb in self._bdbs.values():
            if bdb.cluster == cluster and str(bdb.port) == port:
                return bdb
        return None


def _instance_cluster(crdb: Crdb, instance_id: Any) -> str:
    """The participating cluster of an instance ID (instances are numbered from 1)."""
    if not isinstance(instance_id, int) or not 1 <= instance_id <= len(crdb.participants):
        raise DatabaseError(404, "instance_not_found", f"no instance {instance_id!r}")
    return crdb.participants[instance_id - 1]
