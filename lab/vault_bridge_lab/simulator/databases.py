"""The records of the simulated databases (CRDBs, bdbs, CRDB update tasks, sync outages) and the
checks a ``PUT /v1/bdbs/<uid>`` body gets; :mod:`vault_bridge_lab.simulator.world` holds and changes them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vault_bridge.models.certificates import split_pem_chain
from vault_bridge_lab.simulator.routing import ApiError
from vault_bridge_lab.simulator.schemas import REPLICA_SOURCE

TaskStatus = Literal["queued", "started", "finished", "failed"]
OutageKind = Literal["crdb", "replica"]


class DatabaseError(Exception):
    """A documented REST error raised by the world; the REST layer turns it into a response."""

    def __init__(self, status: int, error_code: str, description: str) -> None:
        super().__init__(f"{status} {error_code}: {description}")
        self.status = status
        self.error_code = error_code
        self.description = description


def leaf_fingerprint(pem: str) -> str | None:
    """SHA-256 of the first certificate of a PEM bundle; None when it does not parse."""
    blocks = split_pem_chain(pem or "")
    if not blocks:
        return None
    try:
        cert = x509.load_pem_x509_certificate(blocks[0].encode())
    except ValueError:
        return None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class Outage:
    """A time a CRDB or a Replica Of link rejected sync; ``end`` None: still rejecting."""

    kind: OutageKind
    key: str  # a CRDB's GUID, or "<dst cluster>/<dst uid>#<entry uid>" for a replica link
    name: str  # the database name
    reason: str
    start: float
    end: float | None = None

    @property
    def length(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass
class Task:
    id: str
    crdb_guid: str
    created: float
    queued_time: float
    run_time: float
    force: bool
    fail: tuple[str, str] | None  # (error_code, description) when injected
    cluster_name: str  # where it was submitted
    started_applied: bool = False
    done_applied: bool = False
    failed: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)
    snapshot: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    @property
    def starts_at(self) -> float:
        return self.created + self.queued_time

    @property
    def ends_at(self) -> float:
        return self.starts_at + self.run_time

    def status(self, now: float) -> TaskStatus:
        if now < self.starts_at:
            return "queued"
        if now < self.ends_at:
            return "started"
        return "failed" if self.fail is not None else "finished"


@dataclass
class Crdb:
    guid: str
    name: str
    participants: list[str]  # cluster names
    db_uids: dict[str, int]  # cluster name -> bdb uid
    known: dict[str, tuple[str | None, str | None]]  # cluster -> (proxy fp, syncer fp)
    outage: Outage | None = None
    # cluster -> the per-instance db_config the CRDB holds (objects/crdb/database_config.md);
    # every update task that finishes pushes it to the instance's bdb again, so a change made
    # with a local PUT /v1/bdbs/<uid> of an instance does not survive it.
    instance_configs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Bdb:
    cluster: str
    uid: int
    name: str
    port: int
    fields: dict[str, Any]  # everything else GET returns (replica_sources, tls, crdt...)


def link_key(bdb: Bdb, entry: Mapping[str, Any]) -> str:
    return f"{bdb.cluster}/{bdb.uid}#{entry.get('uid')}"


def _check_pem(value: Any, what: str, now_utc: datetime) -> None:
    if not isinstance(value, str):
        raise DatabaseError(406, "invalid_certificate", f"{what}: expected a PEM string")
    blocks = split_pem_chain(value)
    if not blocks:
        raise DatabaseError(406, "invalid_certificate", f"{what}: not a PEM certificate")
    for block in blocks:
        try:
            cert = x509.load_pem_x509_certificate(block.encode())
        except ValueError as exc:
            raise DatabaseError(
                406, "invalid_certificate", f"{what}: not a PEM certificate: {exc}"
            ) from exc
        if cert.not_valid_after_utc <= now_utc:
            raise DatabaseError(
                406, "certificate_expired", f"{what}: expired {cert.not_valid_after_utc}"
            )


def check_sources(value: Any, now_utc: datetime) -> list[dict[str, Any]]:
    """A ``replica_sources`` list of a PUT: only writable fields (status-only ones are
    refused, objects/bdb/syncer_sources.md), each with a ``uri``."""
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise DatabaseError(400, "invalid_schema", "'replica_sources' must be a list of objects")
    out = []
    for index, entry in enumerate(value):
        try:
            REPLICA_SOURCE.check(entry, f"replica_sources[{index}]")
        except ApiError as err:
            raise DatabaseError(err.status, err.error_code, err.description) from err
        entry = dict(entry)
        if not entry.get("uri"):
            raise DatabaseError(400, "invalid_schema", f"replica_sources[{index}]: 'uri' missing")
        if entry.get("server_cert"):
            _check_pem(entry["server_cert"], f"replica_sources[{index}].server_cert", now_utc)
        out.append(entry)
    return out


def check_client_certs(value: Any, now_utc: datetime) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(e, dict) and set(e) == {"client_cert"} for e in value
    ):
        raise DatabaseError(
            400,
            "invalid_request",
            "'authentication_ssl_client_certs' must be a list of {\"client_cert\": PEM}",
        )
    seen: set[str | None] = set()
    for index, entry in enumerate(value):
        _check_pem(entry["client_cert"], f"authentication_ssl_client_certs[{index}]", now_utc)
        fp = leaf_fingerprint(entry["client_cert"])
        if fp in seen:
            raise DatabaseError(
                406, "duplicated_certs", f"authentication_ssl_client_certs[{index}] is a duplicate"
            )
        seen.add(fp)
    return [dict(e) for e in value]
