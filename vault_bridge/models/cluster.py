"""Typed values of the Redis Enterprise REST API: nodes, install items, databases, CRDBs, tasks.

The adapter (:mod:`vault_bridge.adapters.redis_enterprise`) turns each JSON answer into these
right where it is read; nothing past it handles raw dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The first version with the bulk install endpoint, PUT /v1/cluster/certificates.
BULK_MIN_VERSION = (7, 22, 2)


def parse_version(version: str) -> tuple[int, ...]:
    """``"7.22.2-14"`` -> ``(7, 22, 2, 14)``; unparseable parts count as 0."""
    out: list[int] = []
    for part in version.replace("-", ".").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _obj(data: Any, what: str) -> Mapping[str, Any]:
    """``data`` as a JSON object; TypeError (a malformed answer) when it is not one."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{what}: expected an object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Node:
    uid: int
    software_version: str

    @property
    def version(self) -> tuple[int, ...]:
        return parse_version(self.software_version)

    @classmethod
    def from_json(cls, data: Any) -> Node:
        node = _obj(data, "node")
        version = node.get("software_version", "0")
        if not isinstance(version, str):
            raise TypeError(f"node software_version: expected a string, got {version!r}")
        return cls(int(node["uid"]), version)


@dataclass(frozen=True)
class CrdbInstance:
    id: int
    cluster_name: str
    cluster_url: str
    db_uid: str


@dataclass(frozen=True)
class Crdb:
    guid: str
    name: str
    instances: tuple[CrdbInstance, ...]
    local_bdb_uids: tuple[str, ...]
    # bdb uid -> instance id, from ``local_databases`` (UNDOCUMENTED: its ``id`` taken as the
    # instance ID a modify_request's ``instances[].id`` names)
    local_instance_ids: Mapping[str, int] = field(default_factory=dict)

    def instance_id_of(self, bdb_uid: int | str) -> int | None:
        return self.local_instance_ids.get(str(bdb_uid))

    @classmethod
    def from_json(cls, data: Any) -> Crdb:
        data = _obj(data, "crdb")
        instances = tuple(
            CrdbInstance(
                id=int(i.get("id", 0)),
                cluster_name=str((i.get("cluster") or {}).get("name", "")),
                cluster_url=str((i.get("cluster") or {}).get("url", "")),
                db_uid=str(i.get("db_uid", "")),
            )
            for i in data.get("instances") or []
        )
        local_dbs = [_obj(d, "local_databases entry") for d in data.get("local_databases") or []]
        local = tuple(str(d.get("bdb_uid", "")) for d in local_dbs)
        ids = {str(d["bdb_uid"]): int(d["id"]) for d in local_dbs if "id" in d and "bdb_uid" in d}
        return cls(str(data["guid"]), str(data.get("name", "")), instances, local, ids)


@dataclass(frozen=True)
class CrdbTask:
    id: str
    crdb_guid: str
    status: str
    errors: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.status in ("finished", "failed")

    @classmethod
    def from_json(cls, data: Any) -> CrdbTask:
        data = _obj(data, "crdb task")
        if not isinstance(data["id"], str) or not data["id"]:
            raise TypeError(f"crdb task id: expected a string, got {data['id']!r}")
        errors = tuple(
            f"{e.get('cluster_name', '')}: {e.get('error_code', '')}: "
            f"{e.get('message') or e.get('description') or ''}"
            for e in data.get("errors") or []
        )
        return cls(
            str(data["id"]), str(data.get("crdb_guid", "")), str(data.get("status", "")), errors
        )


# objects/bdb/syncer_sources.md: the fields of a replica_sources entry a PUT may carry; the
# others (status, last_error, lag, last_update, rdb_size, rdb_transferred) report sync status
# and a schema-checked bdb body refuses them (400 invalid_schema).
REPLICA_WRITABLE = frozenset(
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
REPLICA_STATUS_ONLY = frozenset(
    {"status", "last_error", "lag", "last_update", "rdb_size", "rdb_transferred"}
)


class UnsafeReplicaUpdate(ValueError):
    """Sending this entry back could erase something the GET did not return."""


@dataclass(frozen=True)
class ReplicaSource:
    """One ``replica_sources`` entry of a destination database, every field kept as read
    (``uri`` holds a password and ``client_key`` a private key: never in ``repr`` or logs)."""

    fields: Mapping[str, Any] = field(repr=False)

    @property
    def uid(self) -> str:
        return str(self.fields.get("uid", ""))

    @property
    def server_cert(self) -> str:
        return str(self.fields.get("server_cert") or "")

    @property
    def status(self) -> str:
        """``in-sync`` | ``syncing`` | ``out-of-sync`` (read-only)."""
        return str(self.fields.get("status") or "")

    def as_json(self, **changes: Any) -> dict[str, Any]:
        """The entry for a PUT: the writable fields as read (status-only and unknown fields
        left out), ``changes`` applied.

        ``client_key``: the docs do not say whether a GET returns it, nor what a PUT without
        it does to the stored key (UNDOCUMENTED). It is echoed when the GET returned it; when
        the GET did not and the entry has a ``client_cert``, sending the entry could erase
        the key, so :class:`UnsafeReplicaUpdate` is raised and the database is left alone;
        with no ``client_cert`` there is no key to keep and none is sent."""
        out = {k: v for k, v in self.fields.items() if k in REPLICA_WRITABLE}
        if "client_key" not in out and out.get("client_cert"):
            raise UnsafeReplicaUpdate(
                f"replica source {self.uid}: GET returned its client_cert but not its "
                f"client_key; sending the entry back could erase the key"
            )
        out.update(changes)
        return out


@dataclass(frozen=True)
class Bdb:
    """A database; ``replica_sources`` entries are kept whole so updates keep every field."""

    uid: int
    name: str
    crdt: bool
    crdt_guid: str | None
    replica_sources: tuple[ReplicaSource, ...] = field(repr=False)
    authentication_ssl_client_certs: tuple[str, ...] = field(repr=False)
    enforce_client_authentication: bool = False
    port: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> Bdb:
        data = _obj(data, "bdb")
        return cls(
            uid=int(data["uid"]),
            name=str(data.get("name", "")),
            crdt=bool(data.get("crdt", False)),
            crdt_guid=str(data["crdt_guid"]) if data.get("crdt_guid") else None,
            replica_sources=tuple(
                ReplicaSource(dict(_obj(s, "replica_sources entry")))
                for s in data.get("replica_sources") or []
            ),
            authentication_ssl_client_certs=tuple(
                str(c.get("client_cert", ""))
                for c in data.get("authentication_ssl_client_certs") or []
            ),
            enforce_client_authentication=data.get("enforce_client_authentication") == "enabled",
            port=data["port"] if isinstance(data.get("port"), int) else None,
        )


@dataclass(frozen=True)
class ClusterAccess:
    """The access and TLS settings of ``GET /v1/cluster`` that decide how vault_bridge logs in
    and which certificates the cluster accepts. A field the cluster does not report is None
    (older versions: Basic authentication is on, mTLS off)."""

    basic_authentication: bool
    mtls_certificate_authentication: bool
    control_cipher_suites: str | None
    data_cipher_list: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterAccess:
        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value.strip() else None

        basic = data.get("control_plane_basic_authentication", True)
        mtls = data.get("mtls_certificate_authentication", False)
        return cls(
            basic_authentication=basic is not False,
            mtls_certificate_authentication=mtls is True,
            control_cipher_suites=text("control_cipher_suites"),
            data_cipher_list=text("data_cipher_list"),
        )


OCSP_STATUSES = ("GOOD", "REVOKED", "UNKNOWN")


@dataclass(frozen=True)
class OcspConfig:
    """``GET /v1/ocsp``: whether OCSP stapling is on, and the responder the proxy certificate
    names (read-only: it comes from the certificate's Authority Information Access)."""

    enabled: bool
    responder_url: str

    @classmethod
    def from_json(cls, data: Any) -> OcspConfig:
        if not isinstance(data, dict):
            return cls(False, "")
        url = data.get("responder_url")
        return cls(data.get("ocsp_functionality") is True, url if isinstance(url, str) else "")


@dataclass(frozen=True)
class OcspStatus:
    """``GET /v1/ocsp/status`` or ``POST /v1/ocsp/test``: the proxy certificate's OCSP status.
    Anything but GOOD or REVOKED (missing, malformed) is UNKNOWN."""

    cert_status: str  # GOOD, REVOKED or UNKNOWN
    responder_url: str
    this_update: str = ""
    next_update: str = ""

    @classmethod
    def from_json(cls, data: Any) -> OcspStatus:
        if not isinstance(data, dict):
            return cls("UNKNOWN", "")
        status = str(data.get("cert_status") or "").upper()

        def text(key: str) -> str:
            value = data.get(key)
            return value if isinstance(value, str) else ""

        return cls(
            status if status in OCSP_STATUSES else "UNKNOWN",
            text("responder_url"),
            text("this_update"),
            text("next_update"),
        )
