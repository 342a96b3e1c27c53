"""What the follow-ups read before step 2: every configured cluster's CRDBs, databases and
proxy/syncer certificates (``GET /v1/crdbs``, ``GET /v1/bdbs``, ``GET /v1/cluster/certificates``),
and the update tasks already in flight (``GET /v1/crdb_tasks``), waited for within a bound."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from vault_bridge.adapters.ports import ClusterDatabases, Monotonic, Sleep
from vault_bridge.config.schema import CrdbUpdate
from vault_bridge.decisions.followup_plan import ClusterView, CrdbStep2, plan_crdb_updates
from vault_bridge.errors import VaultBridgeError
from vault_bridge.models.certificates import CertChange
from vault_bridge.rotation.followup_jobs import Limits

logger = logging.getLogger(__name__)


class Discovery:
    """Reads the clusters for the follow-ups, through their REST clients."""

    def __init__(
        self,
        names: Sequence[str],
        client: Callable[[str], ClusterDatabases],
        *,
        clock: Monotonic,
        sleep: Sleep,
        limits: Limits,
    ) -> None:
        self.names = list(names)
        self.client = client
        self.clock = clock
        self.sleep = sleep
        self.limits = limits

    def discover(self) -> dict[str, ClusterView]:
        """Every configured cluster's view, read at once (one thread per cluster)."""
        with ThreadPoolExecutor(
            max_workers=len(self.names), thread_name_prefix="followup-discover"
        ) as pool:
            return dict(zip(self.names, pool.map(self.view, self.names), strict=True))

    def view(self, name: str) -> ClusterView:
        """One cluster's CRDBs, databases and proxy/syncer certificates; a view with the error
        when the cluster cannot be read."""
        client = self.client(name)
        try:
            crdbs = tuple(client.crdbs())
            bdbs = tuple(client.bdbs())
            certs = client.certificates()
        except VaultBridgeError as exc:
            logger.warning("follow-ups: cannot read cluster %s: %s", name, exc)
            return ClusterView(name, error=str(exc))
        proxy, syncer = certs.get("proxy"), certs.get("syncer")
        return ClusterView(
            name,
            crdbs,
            bdbs,
            proxy.pem if proxy else None,
            syncer.pem if syncer else None,
        )

    def for_changes(
        self, changes: Sequence[CertChange], modes: Mapping[str, CrdbUpdate]
    ) -> dict[str, ClusterView]:
        """Discovery when step 1 happened elsewhere (a replay, the CLI): step 2 goes at once,
        after any update already in flight (bounded)."""
        views = self.discover()
        changed = [c for c in views if any(ch.cluster == c for ch in changes)]
        steps, _ = plan_crdb_updates([c for c in changed if not views[c].error], views, modes)
        busy = self.wait_in_flight(steps)
        if busy:
            logger.warning(
                "update tasks still in flight after %gs; running step 2 anyway: %s",
                self.limits.in_flight_wait,
                busy,
            )
        return views

    def wait_in_flight(self, steps: Sequence[CrdbStep2]) -> dict[str, list[str]]:
        """Wait until no update task of these CRDBs is queued or started; returns, by cluster,
        the GUIDs still busy after the bound."""
        guids = {s.guid for s in steps}
        clusters = sorted({c for s in steps for c in s.clusters})
        deadline = self.clock() + self.limits.in_flight_wait
        logged = False
        while True:
            busy = self._busy(clusters, guids)
            if not busy or self.clock() >= deadline:
                return busy
            if not logged:
                logger.info(
                    "waiting for update tasks in flight before installing: %s",
                    ", ".join(sorted({g for gs in busy.values() for g in gs})),
                )
                logged = True
            self.sleep(self.limits.poll)

    def _busy(self, clusters: Sequence[str], guids: set[str]) -> dict[str, list[str]]:
        """By cluster, the GUIDs among ``guids`` with an update task not done (or why the
        tasks could not be read)."""
        busy: dict[str, list[str]] = {}
        for cluster in clusters:
            try:
                tasks = self.client(cluster).crdb_tasks()
            except VaultBridgeError as exc:
                busy.setdefault(cluster, []).append(f"(tasks unreadable: {exc})")
                continue
            for task in tasks:
                if task.crdb_guid in guids and not task.done:
                    busy.setdefault(cluster, []).append(task.crdb_guid)
        return busy
