"""What the simulated REST API accepts in a request body, per endpoint, from the vendor's pages.

Each :class:`BodySchema` lists the fields a body may carry, the required ones and the ones that
are read-only (or status only): a body with an unknown or a read-only field is refused with
``400 invalid_schema``, as a real cluster's schema-checked endpoints do. The facts come from:

- ``PUT /v1/cluster/certificates`` and ``PUT /v1/cluster/update_cert``: the OpenAPI document
  (``ClusterCertificatesUpdateRequest``, ``ClusterCertificateUpdate``, both
  ``additionalProperties: false``);
- ``PUT /v1/bdbs/<uid>``: ``objects/bdb/_index.md`` (the bdb object; only the fields the product
  and the lab use are listed), ``objects/bdb/syncer_sources.md`` (a ``replica_sources`` entry:
  ``status``, ``last_error``, ``lag``, ``last_update``, ``rdb_size``, ``rdb_transferred`` report
  status);
- ``POST /v1/crdbs/<guid>/updates``: ``objects/crdb/modify_request.md``.

``tests/unit/test_simulator_schemas.py`` compares these facts with the OpenAPI document and the
pages where they are present.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from vault_bridge_lab.simulator.routing import ApiError


@dataclass(frozen=True)
class BodySchema:
    name: str
    fields: frozenset[str]  # every field the body may carry
    required: frozenset[str] = frozenset()
    read_only: frozenset[str] = frozenset()  # known, but refused in a request

    def check(self, body: Any, where: str) -> Mapping[str, Any]:
        """``body`` when it fits; 400 ``invalid_schema`` naming the first field that does not."""
        if not isinstance(body, dict):
            raise invalid_schema(f"{where}: expected an object ({self.name})")
        read_only = sorted(set(body) & self.read_only)
        if read_only:
            raise invalid_schema(f"{where}: read-only field(s) {', '.join(read_only)}")
        unknown = sorted(set(body) - self.fields)
        if unknown:
            raise invalid_schema(f"{where}: unknown field(s) {', '.join(unknown)} ({self.name})")
        missing = sorted(self.required - set(body))
        if missing:
            raise invalid_schema(f"{where}: missing field(s) {', '.join(missing)}")
        return body


def invalid_schema(description: str) -> ApiError:
    return ApiError(400, "invalid_schema", description)


CERTIFICATE_ITEM: Final = BodySchema(
    "ClusterCertificateUpdate", frozenset({"name", "certificate", "key"})
)
CERTIFICATES_REQUEST: Final = BodySchema(
    "ClusterCertificatesUpdateRequest", frozenset({"certificates"})
)

REPLICA_SOURCE_WRITABLE: Final = frozenset(
    {
        "uid",
        "uri",
        "encryption",
        "server_cert",
        "client_cert",
        "client_key",
        "compression",
        "replication_tls_sni",
    }
)
REPLICA_SOURCE_STATUS: Final = frozenset(
    {"status", "last_error", "lag", "last_update", "rdb_size", "rdb_transferred"}
)
REPLICA_SOURCE: Final = BodySchema(
    "syncer_sources",
    REPLICA_SOURCE_WRITABLE | REPLICA_SOURCE_STATUS,
    required=frozenset({"uri"}),
    read_only=REPLICA_SOURCE_STATUS,
)

# The bdb fields the lab's databases have and a PUT may change (objects/bdb/_index.md).
BDB_WRITABLE: Final = frozenset(
    {
        "name",
        "port",
        "tls_mode",
        "ssl",
        "crdt_sync",
        "replica_sources",
        "replica_sync",
        "sync",
        "authentication_ssl_client_certs",
        "authentication_ssl_crdt_certs",
        "enforce_client_authentication",
        "mtls_allow_outdated_certs",
        "memory_size",
    }
)
# bdb fields a PUT may not carry (objects/bdb/_index.md: read-only, or set at creation).
BDB_READ_ONLY: Final = frozenset(
    {"uid", "status", "crdt", "crdt_guid", "endpoints", "shard_list", "version"}
)
BDB_UPDATE: Final = BodySchema("bdb", BDB_WRITABLE | BDB_READ_ONLY, read_only=BDB_READ_ONLY)

# objects/crdb/modify_request.md
CRDB_MODIFY_REQUEST: Final = BodySchema(
    "crdb modify_request",
    frozenset({"add_instances", "crdb", "force_update", "remove_instances"}),
)
# objects/crdb/_index.md (the part of a crdb object an update may carry) and instance_info.
CRDB_OBJECT: Final = BodySchema(
    "crdb", frozenset({"instances", "default_db_config", "encryption", "name"})
)
CRDB_INSTANCE: Final = BodySchema(
    "crdb instance_info",
    frozenset({"id", "cluster", "db_config", "compression"}),
    required=frozenset({"id"}),
)
CRDB_DB_CONFIG_PER_INSTANCE: Final = BodySchema(
    "crdb database_config",
    frozenset(
        {
            "authentication_ssl_client_certs",
            "cert",
            "enforce_client_authentication",
            "mtls_allow_outdated_certs",
            "memory_size",
            "port",
            "private_key",
        }
    ),
)

#: Endpoints whose body is checked, for the API fidelity tests.
SCHEMAS: Final[Mapping[str, BodySchema]] = {
    "PUT /v1/cluster/certificates": CERTIFICATES_REQUEST,
    "PUT /v1/cluster/certificates item": CERTIFICATE_ITEM,
    "PUT /v1/cluster/update_cert": CERTIFICATE_ITEM,
    "PUT /v1/bdbs/<uid>": BDB_UPDATE,
    "PUT /v1/bdbs/<uid> replica_sources entry": REPLICA_SOURCE,
    "POST /v1/crdbs/<guid>/updates": CRDB_MODIFY_REQUEST,
}

#: x-timeout-seconds the OpenAPI document gives the install endpoints.
INSTALL_TIMEOUT_SECONDS: Final = 900
