"""The Replica Of (Active-Passive) follow-ups: ``PUT /v1/bdbs/<uid>`` on the databases the plan
names (:mod:`vault_bridge.decisions.followup_plan`), through the clusters' REST clients."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from vault_bridge.adapters.crdb_runners import RestRunner
from vault_bridge.adapters.ports import ClusterDatabases, Monotonic, Sleep
from vault_bridge.decisions.followup_plan import ClientCertUpdate, ServerCertUpdate, leaf_fp
from vault_bridge.errors import FollowUpError, VaultBridgeError
from vault_bridge.models.cluster import Bdb
from vault_bridge.rotation.followup_jobs import Job, Limits

logger = logging.getLogger(__name__)


class ReplicaOf:
    """Carries out one planned database update; ``job`` gets the moments it sent and was done."""

    def __init__(
        self,
        client: Callable[[str], ClusterDatabases],
        *,
        clock: Monotonic,
        sleep: Sleep,
        limits: Limits,
    ) -> None:
        self.client = client
        self.clock = clock
        self.sleep = sleep
        self.limits = limits

    def set_server_cert(self, job: Job, update: ServerCertUpdate) -> None:
        job.mark_sent(self.clock())
        try:
            self.client(update.cluster).update_bdb(
                update.uid, {"replica_sources": [dict(e) for e in update.replica_sources]}
            )
        except VaultBridgeError as exc:
            raise FollowUpError(
                f"replica {update.name} (uid {update.uid}) on {update.cluster}: new "
                f"server_cert not set: {exc}"
            ) from exc
        job.done = self.clock()
        logger.info(
            "replica %s (uid %s) on %s: server_cert set to the new proxy certificate of %s",
            update.name,
            update.uid,
            update.cluster,
            ", ".join(c for c, _ in update.causes),
        )

    def swap_client_cert(self, job: Job, update: ClientCertUpdate) -> None:
        client = self.client(update.cluster)
        where = f"source {update.name} (uid {update.uid}) on {update.cluster}"
        try:
            if update.add:
                job.mark_sent(self.clock())
                source = client.bdb(update.uid)
                current = source.authentication_ssl_client_certs
                if update.new_pem and leaf_fp(update.new_pem) not in {leaf_fp(c) for c in current}:
                    self._set_client_certs(client, source, [*current, update.new_pem])
                logger.info("%s: trusts the new syncer certificate of %s", where, update.cause[0])
            job.done = self.clock()
            self._wait_in_sync(update, where)
            source = client.bdb(update.uid)
            current = source.authentication_ssl_client_certs
            kept = [c for c in current if leaf_fp(c) != update.old_fp]
            if len(kept) != len(current):
                self._set_client_certs(client, source, kept)
                logger.info("%s: old syncer certificate of %s removed", where, update.cause[0])
        except FollowUpError:
            raise
        except VaultBridgeError as exc:
            raise FollowUpError(f"{where}: {exc}") from exc

    def _set_client_certs(self, client: ClusterDatabases, source: Bdb, pems: Sequence[str]) -> None:
        """The source database's ``authentication_ssl_client_certs``: PUT /v1/bdbs/<uid>, or
        for an Active-Active instance its per-instance ``db_config`` through
        POST /v1/crdbs/<guid>/updates (objects/crdb/database_config.md): a local PUT there
        would be overwritten by the next CRDB configuration push, our own force update
        included."""
        certs: list[dict[str, str]] = _certs(pems)
        if not (source.crdt and source.crdt_guid):
            client.update_bdb(source.uid, {"authentication_ssl_client_certs": certs})
            return
        guid = source.crdt_guid
        instance = client.crdb(guid).instance_id_of(source.uid)
        if instance is None:
            raise FollowUpError(
                f"CRDB {guid} does not list database {source.uid} among its local databases; "
                f"its client certificates cannot be set through the CRDB"
            )
        # force_update: after a certificate change an update without it is refused (the
        # participating clusters' certificates changed), and it is the step 2 update anyway.
        body = {
            "force_update": True,
            "crdb": {
                "instances": [
                    {"id": instance, "db_config": {"authentication_ssl_client_certs": certs}}
                ]
            },
        }
        runner = RestRunner(
            client, timeout=self.limits.task_timeout, clock=self.clock, sleep=self.sleep
        )
        runner.apply(guid, body)

    def _wait_in_sync(self, update: ClientCertUpdate, where: str) -> None:
        deadline = self.clock() + self.limits.in_sync_wait
        waiting = list(update.replicas)
        while waiting:
            still = []
            for ref in waiting:
                bdb = self.client(ref.cluster).bdb(ref.uid)
                entries = [
                    e for e in bdb.replica_sources if leaf_fp(e.server_cert) in ref.source_cert_fps
                ]
                if any(e.status != "in-sync" for e in entries):
                    still.append(ref)
            waiting = still
            if not waiting:
                return
            if self.clock() >= deadline:
                logger.warning(
                    "%s: replica(s) %s not in-sync after %gs; removing the old syncer "
                    "certificate of %s anyway",
                    where,
                    ", ".join(f"{r.name} on {r.cluster}" for r in waiting),
                    self.limits.in_sync_wait,
                    update.cause[0],
                )
                return
            self.sleep(self.limits.poll)


def _certs(pems: Sequence[str]) -> list[dict[str, str]]:
    return [{"client_cert": pem} for pem in pems]
