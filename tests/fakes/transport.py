"""An in-memory HTTP transport for the real :class:`ClusterClient`: its requests go to a
:class:`FakeCluster` instead of the network, so the client's own retries, backoff and status
mapping run unchanged. ``failures["PUT /v1/cluster/certificates"]`` queues HTTP statuses (or
``"connection"`` for a refused connection) answered before the fake cluster is asked."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter

from tests.conftest import make_ca
from tests.fakes.cluster import FakeCluster
from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.adapters.rest.certificates import REQUIRED_CERTIFICATES
from vault_bridge.decisions.install import CertUpload
from vault_bridge.errors import ClusterError


class InMemoryAdapter(BaseAdapter):
    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__()
        self.cluster = cluster
        self.failures: dict[str, list[int | str]] = {}
        self.sent: list[str] = []

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        path = urlsplit(request.url or "").path
        endpoint = f"{request.method} {path}"
        self.sent.append(endpoint)
        queue = self.failures.get(endpoint)
        if queue:
            failure = queue.pop(0)
            if failure == "connection":
                raise requests.exceptions.ConnectionError(f"connection refused: {endpoint}")
            return _response(request, int(failure), {"description": f"HTTP {failure}"})
        body = json.loads(request.body) if request.body else None
        try:
            return _response(request, 200, self._handle(endpoint, body))
        except ClusterError as exc:
            return _response(request, exc.status or 500, {"description": exc.message})

    def _handle(self, endpoint: str, body: Any) -> Any:
        cluster = self.cluster
        if endpoint == "GET /v1/nodes":
            return [{"uid": 1, "software_version": cluster.version}]
        if endpoint == "GET /v1/cluster/certificates":
            # A real cluster always has these (a fresh one self-signed): stand-ins for the
            # ones the fake does not hold, so the answer is never malformed.
            answer = {f"{n}_cert": _fresh_cluster_pem() for n in REQUIRED_CERTIFICATES}
            answer.update({f"{n}_cert": c.pem for n, c in cluster.certificates().items()})
            return answer
        if endpoint == "PUT /v1/cluster/certificates":
            cluster.put_certificates([_upload(i) for i in body["certificates"]])
            return {}
        if endpoint == "PUT /v1/cluster/update_cert":
            cluster.update_cert(_upload(body))
            return {}
        raise cluster.error(404, f"no route for {endpoint}")

    def close(self) -> None:
        return None


@functools.cache
def _fresh_cluster_pem() -> str:
    return make_ca("fresh cluster").pem


def _upload(item: Mapping[str, str]) -> CertUpload:
    return CertUpload(item["name"], item["certificate"], item["key"])


def _response(request: requests.PreparedRequest, status: int, body: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.headers["Content-Type"] = "application/json"
    response.request = request
    response.url = request.url or ""
    return response


def http_client(
    cluster: FakeCluster, client: ClusterClient
) -> tuple[ClusterClient, InMemoryAdapter]:
    """``client`` with its session's transport replaced by one that talks to ``cluster``."""
    adapter = InMemoryAdapter(cluster)
    client._session.mount("https://", adapter)
    return client, adapter
