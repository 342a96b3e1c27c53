"""The endpoints about the cluster and our access to it: nodes and versions, the cluster
object, the management role of our user.
"""

from __future__ import annotations

import logging
from typing import Any

from vault_bridge.adapters.rest.errors import (
    ROLE_STATUS_MESSAGES,
    _list,
    _str_field,
)
from vault_bridge.adapters.rest.transport import (
    ClusterTransport,
)
from vault_bridge.errors import ClusterError
from vault_bridge.models.cluster import (
    ClusterAccess,
    Node,
)

logger = logging.getLogger(__name__)


class AccessEndpoints(ClusterTransport):
    """GET /v1/nodes, /v1/cluster and the role of our user."""

    def nodes(self) -> list[Node]:
        """GET /v1/nodes"""
        data = self.request("GET", "/v1/nodes")
        return self._typed("GET", "/v1/nodes", lambda: [Node.from_json(n) for n in _list(data)])

    def lowest_version(self) -> tuple[int, ...]:
        """The lowest ``software_version`` over the nodes (GET /v1/nodes), read again once
        ``version_ttl`` has passed. Kept in between: during a rolling upgrade the lowest version
        only rises, and an endpoint a cluster lacks is noticed at the install (404/405)."""
        now = self._monotonic()
        if self._version is not None and now - self._version[0] < self._version_ttl:
            return self._version[1]
        nodes = self.nodes()
        if not nodes:
            raise ClusterError("the cluster reports no nodes", cluster=self.name)
        lowest = min(n.version for n in nodes)
        self._version = (now, lowest)
        return lowest

    def cluster_info(self) -> dict[str, Any]:
        """GET /v1/cluster"""
        return dict(self.request("GET", "/v1/cluster"))

    def access(self) -> ClusterAccess:
        """GET /v1/cluster -> the login and cipher settings."""
        data = self.request("GET", "/v1/cluster")
        if not isinstance(data, dict):
            raise ClusterError("GET /v1/cluster answered no object", cluster=self.name)
        return ClusterAccess.from_json(data)

    def user_role(self) -> str | None:
        """GET /v1/users/role (in the OpenAPI document): the management role of the user we
        log in as; None when the cluster does not have the endpoint (404: older clusters)."""
        path = "/v1/users/role"
        try:
            data = self.request("GET", path, retry=False, messages=ROLE_STATUS_MESSAGES)
        except ClusterError as exc:
            if exc.status in (404, 405):
                return None
            raise
        return self._typed("GET", path, lambda: _str_field(data, "role"))

    def role_from_users(self) -> str | None:
        """GET /v1/users: the role of our user's entry (matched by ``email``); None when the
        user may not list users (403: only ``admin`` and ``user_manager`` may)."""
        path = "/v1/users"
        try:
            data = self.request("GET", path, retry=False, messages=ROLE_STATUS_MESSAGES)
        except ClusterError as exc:
            if exc.status == 403:
                return None
            raise

        def find(items: Any) -> str | None:
            for user in _list(items):
                if isinstance(user, dict) and user.get("email") == self.settings.username:
                    return _str_field(user, "role")
            return None

        return self._typed("GET", path, lambda: find(data))

    def management_role(self) -> str | None:
        """The management role of our user: GET /v1/users/role, or on a cluster without it
        GET /v1/users; None when neither tells. Neither changes anything, and neither 403 can
        be confused with the "unknown certificate" 403 of the install endpoints (the old
        probe, PUT /v1/cluster/update_cert, was both deprecated and ambiguous)."""
        role = self.user_role()
        return role if role is not None else self.role_from_users()

    def can_install(self) -> bool:
        """Whether our user holds ``admin``, the one role with ``update_cluster``."""
        return self.management_role() == "admin"
