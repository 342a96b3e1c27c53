"""A simulated Redis Enterprise Software cluster on loopback, written from the REST contract.

It serves what vault_bridge talks to and checks, with real TLS:

- the REST API (``api`` certificate): ``GET /v1/nodes``, ``GET /v1/cluster``,
  ``GET|PUT /v1/cluster/certificates`` (bulk install, 7.22.2+) and ``PUT /v1/cluster/update_cert``;
- the Cluster Manager UI (``cm`` certificate): a tiny HTTPS page;
- the Prometheus exporter (``metrics_exporter`` certificate): ``node_cert_expiration_seconds``;
- one database endpoint (``proxy`` certificate): TLS, then ``+PONG`` to anything;
- databases and Active-Active: ``GET /v1/crdbs[/<guid>]``, ``POST /v1/crdbs/<guid>/updates``,
  ``GET /v1/crdb_tasks[/<id>]``, ``GET /v1/bdbs[/<uid>]``, ``PUT /v1/bdbs/<uid>``, with the sync
  health model of :mod:`vault_bridge_lab.simulator.world` (shared by clusters given one
  ``world``).

It is strict where the contract is (``/work/shared/redis-enterprise-api.md``): Basic auth on
every call, the documented status codes and ``{"error_code", "description"}`` bodies, atomic
bulk installs, the certificate requirements. Each listener builds its TLS context from the
certificate installed at that moment, so a new connection sees a new certificate.

Modules:

- ``names``: certificate names, listeners, the versions that know each name;
- ``certs``: the checks an install makes, self-signed certificates;
- ``routing``: requests, responses, documented errors and the route table (:class:`Router`);
- ``rest``: users, injected faults, the request pipeline and one handler per route;
- ``tls``: the TLS listeners and their handlers;
- ``cluster``: :class:`SimulatedCluster`, its state and lifecycle;
- ``databases`` and ``world``: database, CRDB and task records, and :class:`DatabaseWorld`;
- ``__main__``: the standalone run.

Run it standalone with ``python -m vault_bridge_lab.simulator --help``.
"""

from vault_bridge_lab.simulator.cluster import SimulatedCluster
from vault_bridge_lab.simulator.databases import DatabaseError, Outage
from vault_bridge_lab.simulator.names import (
    BULK_MIN_VERSION,
    INTERNODE_NAMES,
    KNOWN_NAMES,
    LISTENERS,
    MTLS_TRUSTED_CA,
    NAME_MIN_VERSION,
    Version,
    parse_version,
)
from vault_bridge_lab.simulator.rest import DEFAULT_USERS, RecordedRequest
from vault_bridge_lab.simulator.routing import (
    ROLE_PERMISSIONS,
    ApiRequest,
    ApiResponse,
    Route,
    RouteHandler,
    Router,
)
from vault_bridge_lab.simulator.world import DatabaseWorld

__all__ = [
    "BULK_MIN_VERSION",
    "DEFAULT_USERS",
    "INTERNODE_NAMES",
    "KNOWN_NAMES",
    "LISTENERS",
    "MTLS_TRUSTED_CA",
    "NAME_MIN_VERSION",
    "ROLE_PERMISSIONS",
    "ApiRequest",
    "ApiResponse",
    "DatabaseError",
    "DatabaseWorld",
    "Outage",
    "RecordedRequest",
    "Route",
    "RouteHandler",
    "Router",
    "SimulatedCluster",
    "Version",
    "parse_version",
]
