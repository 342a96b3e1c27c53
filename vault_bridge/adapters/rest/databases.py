"""The endpoints of databases and Active-Active (the follow-ups): bdbs, CRDBs and their tasks."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from requests.adapters import HTTPAdapter

from vault_bridge.adapters.rest.errors import (
    DATABASE_STATUS_MESSAGES,
    _list,
)
from vault_bridge.adapters.rest.transport import (
    ClusterTransport,
)
from vault_bridge.adapters.rest.trust import _ClientCertAdapter
from vault_bridge.models.cluster import (
    Bdb,
    Crdb,
    CrdbTask,
)

logger = logging.getLogger(__name__)


class DatabaseEndpoints(ClusterTransport):
    """Databases, CRDBs and CRDB tasks."""

    def reserve_connections(self, count: int) -> None:
        """Keep up to ``count`` connections to the cluster, for as many concurrent requests
        (the follow-ups' step 2 runs one request per CRDB at once)."""
        if count <= self._pool_size:
            return
        self._pool_size = count
        with self._client_lock:
            if self._client_context is not None:
                self._session.mount("https://", _ClientCertAdapter(self._client_context, count))
                return
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=count)
        self._session.mount("https://", adapter)

    def crdbs(self) -> list[Crdb]:
        """GET /v1/crdbs"""
        return self._get("/v1/crdbs", lambda data: [Crdb.from_json(c) for c in _list(data)])

    def crdb(self, guid: str) -> Crdb:
        """GET /v1/crdbs/<guid>"""
        return self._get(f"/v1/crdbs/{guid}", Crdb.from_json)

    def crdb_tasks(self) -> list[CrdbTask]:
        """GET /v1/crdb_tasks"""

        def build(data: Any) -> list[CrdbTask]:
            items = data.get("tasks", []) if isinstance(data, dict) else data
            return [CrdbTask.from_json(t) for t in _list(items)]

        return self._get("/v1/crdb_tasks", build)

    def crdb_task(self, task_id: str) -> CrdbTask:
        """GET /v1/crdb_tasks/<id>"""
        return self._get(f"/v1/crdb_tasks/{task_id}", CrdbTask.from_json)

    def crdb_update(
        self, guid: str, body: Mapping[str, Any] | None = None, *, task_id: str | None = None
    ) -> CrdbTask:
        """POST /v1/crdbs/<guid>/updates (default body ``{"force_update": true}``) with an
        ``X-Task-ID`` of our choosing (requests/crdbs/updates.md): sent once; after a timeout
        the caller polls ``GET /v1/crdb_tasks/<that id>`` instead of starting a second task."""
        path = f"/v1/crdbs/{guid}/updates"
        data = self.request(
            "POST",
            path,
            dict(body) if body is not None else {"force_update": True},
            messages=DATABASE_STATUS_MESSAGES,
            retry=False,
            headers={"X-Task-ID": task_id or new_task_id()},
        )
        return self._typed("POST", path, lambda: CrdbTask.from_json(data))

    def bdbs(self) -> list[Bdb]:
        """GET /v1/bdbs"""
        return self._get("/v1/bdbs", lambda data: [Bdb.from_json(b) for b in _list(data)])

    def bdb(self, uid: int) -> Bdb:
        """GET /v1/bdbs/<uid>"""
        return self._get(f"/v1/bdbs/{uid}", Bdb.from_json)


def new_task_id() -> str:
    """A task ID for ``X-Task-ID`` (a UUID, as the cluster's own task IDs are)."""
    return str(uuid.uuid4())
