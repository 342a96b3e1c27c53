"""The endpoints of OCSP stapling of the proxy certificate (/v1/ocsp)."""

from __future__ import annotations

import logging

from vault_bridge.adapters.rest.transport import (
    ClusterTransport,
)
from vault_bridge.errors import ClusterError
from vault_bridge.models.cluster import (
    OcspConfig,
    OcspStatus,
)

logger = logging.getLogger(__name__)


class OcspEndpoints(ClusterTransport):
    """OCSP stapling of the proxy certificate."""

    def ocsp(self) -> OcspConfig | None:
        """GET /v1/ocsp (None: the cluster has no OCSP, 404, or not on every node, 406)."""
        try:
            config = OcspConfig.from_json(self.request("GET", "/v1/ocsp", retry=False))
        except ClusterError as exc:
            if exc.status not in (404, 406):
                raise
            config = None
        self._last_ocsp = (self._monotonic(), config)
        return config

    def last_ocsp(self, max_age: float = 60.0) -> OcspConfig | None:
        """What the last GET /v1/ocsp answered, when vault-bridge has not changed the OCSP
        settings since and it is younger than ``max_age`` seconds; else a new read (the plan's
        read serves the check before a proxy install and the report after it)."""
        last = self._last_ocsp
        if last is None or self._monotonic() - last[0] >= max_age:
            return self.ocsp()
        return last[1]

    def enable_ocsp(self) -> OcspConfig:
        """PUT /v1/ocsp with ``{"ocsp_functionality": true}``."""
        body = {"ocsp_functionality": True}
        self._last_ocsp = None
        config = OcspConfig.from_json(self.request("PUT", "/v1/ocsp", body, retry=False))
        self._last_ocsp = (self._monotonic(), config)
        return config

    def ocsp_status(self) -> OcspStatus:
        """GET /v1/ocsp/status: the status the cluster staples now (its cache)."""
        return OcspStatus.from_json(self.request("GET", "/v1/ocsp/status"))

    def ocsp_test(self) -> OcspStatus:
        """POST /v1/ocsp/test: ask the responder now (cached when OCSP is on)."""
        return OcspStatus.from_json(self.request("POST", "/v1/ocsp/test", retry=False))
