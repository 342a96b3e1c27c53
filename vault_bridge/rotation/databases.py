"""Databases with a proxy certificate of their own (``[clusters.databases.<name>]``).

For each configured database (matched by name on ``GET /v1/bdbs``): read its certificate
(``GET /v1/bdbs/<uid>/certificates``), classify it like a cluster certificate, and when it is
due obtain one from Vault, validate it with ``dry_run`` first, install it, read it back, check
what the database endpoint serves, then point every Replica Of destination that pinned the old
certificate (``replica_sources[].server_cert``) at the new one. An Active-Active instance gets
its certificate through its CRDB's per-instance ``db_config`` (``cert``, ``private_key``), not
on the local bdb. Each step goes through the intent journal like a cluster certificate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from vault_bridge.adapters.crdb_runners import RestRunner
from vault_bridge.adapters.ports import ClusterDatabaseCertificates, Vault
from vault_bridge.config.settings import CertSpec, ClusterSettings, DatabaseSpec, Settings
from vault_bridge.decisions.followup_plan import leaf_fp
from vault_bridge.decisions.install import CertUpload
from vault_bridge.decisions.renewal import Action, CertStatus, classify
from vault_bridge.errors import ClusterError, FollowUpError, VaultBridgeError, VerificationError
from vault_bridge.models.certificates import (
    CertificateInfo,
    InstalledCertificate,
    IssuedCertificate,
)
from vault_bridge.models.vault import MountIssuers
from vault_bridge.rotation.login import issue_from_vault

logger = logging.getLogger(__name__)


class DatabaseJournal(Protocol):
    """The rotation hooks (the intent journal) as a database certificate goes through them:
    the runaway guard, then issued -> installing -> installed (follow-ups pending) -> done,
    under the name ``bdb:<database>``."""

    def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None: ...

    def issued(self, spec: CertSpec, issued: IssuedCertificate) -> None: ...

    def before_install(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None: ...

    def installed(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None: ...

    def completed(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None: ...


class _NoJournal:
    def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
        pass

    def issued(self, spec: CertSpec, issued: IssuedCertificate) -> None:
        pass

    def before_install(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None:
        pass

    def installed(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None:
        pass

    def completed(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None:
        pass


@dataclass(frozen=True)
class DatabaseState:
    """One configured database as a pass found it."""

    spec: DatabaseSpec
    uid: int
    installed: InstalledCertificate | None
    status: CertStatus
    crdt: bool = False  # an Active-Active instance
    crdt_guid: str | None = None  # its CRDB


class DatabaseCertificates:
    """The databases of every cluster with a certificate of their own, as the last status read
    found them; a cluster whose databases cannot be read fails them, not the cluster."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], DatabaseState] = {}
        self.errors: dict[str, str] = {}

    def clear(self) -> None:
        self.states.clear()
        self.errors.clear()

    def has(self, cluster: str, name: str) -> bool:
        return (cluster, name) in self.states

    def read(
        self,
        cluster: ClusterSettings,
        client: ClusterDatabaseCertificates,
        issuers: Callable[[str], MountIssuers],
        now: datetime,
    ) -> list[CertStatus]:
        try:
            states = database_states(cluster, client, issuers, now)
        except VaultBridgeError as exc:
            logger.error("cluster %s: database certificates: %s", cluster.name, exc)
            self.errors[cluster.name] = str(exc)
            return []
        for state in states:
            self.states[(cluster.name, state.spec.label)] = state
        return [state.status for state in states]

    def rotate(
        self,
        actions: Sequence[Action],
        settings: Settings,
        clients: Mapping[str, ClusterDatabaseCertificates],
        vault: Vault,
        *,
        now: Callable[[], datetime],
        probe: Callable[[str], CertificateInfo],
        sleep: Callable[[float], None],
        journal: DatabaseJournal | None = None,
    ) -> list[tuple[str, str, CertificateInfo | None, str | None]]:
        """(cluster, name, new certificate or None, error) for every database certificate
        acted on, and a failure for every database of a cluster that could not be read."""
        out: list[tuple[str, str, CertificateInfo | None, str | None]] = []
        for cluster, error in self.errors.items():
            for spec in settings.cluster(cluster).databases:
                out.append((cluster, spec.label, None, error))
        for action in actions:
            state = self.states[(action.cluster, action.name)]
            try:
                info = rotate_database(
                    state,
                    cluster=settings.cluster(action.cluster),
                    client=clients[action.cluster],
                    clients=clients,
                    vault=vault,
                    now=now,
                    probe=probe,
                    sleep=sleep,
                    journal=journal,
                    explicit=action.reason == "forced",
                )
            except VaultBridgeError as exc:
                logger.error("%s on %s: %s", action.name, action.cluster, exc)
                out.append((action.cluster, action.name, None, str(exc)))
                continue
            out.append((action.cluster, action.name, info, None))
        return out


def database_states(
    cluster: ClusterSettings,
    client: ClusterDatabaseCertificates,
    issuers: Callable[[str], MountIssuers],
    now: datetime,
) -> list[DatabaseState]:
    """Every configured database of ``cluster``; raises when one is not on the cluster or the
    cluster has no per-database certificate endpoints."""
    if not cluster.databases:
        return []
    client.bdb_certificates()  # 404 here: "needs a newer Redis Enterprise", said once
    by_name = {b.name: b for b in client.bdbs()}
    states = []
    for spec in cluster.databases:
        bdb = by_name.get(spec.database)
        if bdb is None:
            raise ClusterError(f"no database named {spec.database!r}", cluster=cluster.name)
        installed = client.bdb_certificate(bdb.uid)
        status = classify(spec.cert, installed, issuers(spec.cert.pki_mount), now)
        states.append(
            DatabaseState(
                spec,
                bdb.uid,
                installed,
                replace(status, name=spec.label),
                bdb.crdt,
                bdb.crdt_guid,
            )
        )
    return states


def rotate_database(
    state: DatabaseState,
    *,
    cluster: ClusterSettings,
    client: ClusterDatabaseCertificates,
    clients: Mapping[str, ClusterDatabaseCertificates],
    vault: Vault,
    now: Callable[[], datetime],
    probe: Callable[[str], CertificateInfo],
    sleep: Callable[[float], None],
    journal: DatabaseJournal | None = None,
    explicit: bool = False,
) -> CertificateInfo:
    """A new certificate for one database, installed, checked and carried to its replicas,
    each step recorded in ``journal`` (the runaway guard first) like a cluster certificate."""
    hooks: DatabaseJournal = journal or _NoJournal()
    if state.crdt and not state.crdt_guid:
        raise ClusterError(
            f"{state.spec.database} is an Active-Active instance without a crdt_guid: its "
            "certificate cannot be set through its CRDB",
            cluster=cluster.name,
            certificate=state.spec.label,
        )
    cert = state.spec.cert
    label = state.spec.label
    if explicit:
        hooks.before_issue(cert, explicit=True)
    else:
        hooks.before_issue(cert)
    issued = issue_from_vault(
        vault,
        pki_mount=cert.pki_mount,
        role=cert.role,
        mode=cert.mode,
        key_type=cert.key_type,
        key_bits=cert.key_bits,
        common_name=cert.common_name,
        alt_names=cert.alt_names,
        ip_sans=cert.ip_sans,
        ttl=cert.ttl,
        now=now,
        on_issued=lambda issued: hooks.issued(cert, issued),
    )
    upload = CertUpload(label, issued.chain_pem, issued.private_key)
    client.set_bdb_certificate(state.uid, upload, dry_run=True)  # refused here: nothing changed
    old = state.installed.pem if state.installed else client.certificates()["proxy"].pem
    hooks.before_install(cluster.name, label, issued, state.installed)
    if state.crdt_guid:
        set_instance_certificate(client, state.crdt_guid, state.uid, upload)
    else:
        client.set_bdb_certificate(state.uid, upload, dry_run=False)
    back = client.bdb_certificate(state.uid)
    expected = issued.info.fingerprint
    if back is None or back.info.fingerprint != expected:
        raise VerificationError(
            "the cluster reports a different certificate after the install",
            cluster=cluster.name,
            certificate=label,
        )
    if state.spec.verify_endpoint:
        _probe(state.spec.verify_endpoint, expected, probe, sleep, cluster.name, label)
    # Installed and served: the Replica Of carry is its follow-up (the journal keeps it
    # pending until it succeeded; the certificate it replaced is revoked after that).
    hooks.installed(cluster.name, label, issued, state.installed)
    logger.info(
        "installed %s on %s: serial %s, not_after %s",
        label,
        cluster.name,
        issued.serial,
        issued.not_after.isoformat(),
    )
    carry_to_replicas(
        state,
        old,
        issued.chain_pem,
        first=state.installed is None,
        clients=clients,
        where=cluster.name,
    )
    hooks.completed(cluster.name, label, issued, state.installed)
    return issued.info


def set_instance_certificate(
    client: ClusterDatabaseCertificates, guid: str, uid: int, upload: CertUpload
) -> None:
    """An Active-Active instance's own certificate: ``cert`` and ``private_key`` of its
    per-instance ``db_config`` (objects/crdb/database_config.md), set through
    ``POST /v1/crdbs/<guid>/updates`` (requests/crdbs/updates.md, objects/crdb/modify_request.md)
    and its task polled to the end. A PUT or POST on the local bdb would be overwritten by the
    next CRDB configuration push. ``force_update``: the certificate change is one the
    participating clusters must take (the rule of the follow-ups' step 2)."""
    instance = client.crdb(guid).instance_id_of(uid)
    if instance is None:
        raise ClusterError(
            f"CRDB {guid} does not list database {uid} among its local instances; its "
            "certificate cannot be set through the CRDB",
            cluster=client.name,
        )
    # The body holds the private key: never logged (RestRunner logs the task, not the body).
    body = {
        "force_update": True,
        "crdb": {
            "instances": [
                {
                    "id": instance,
                    "db_config": {"cert": upload.certificate, "private_key": upload.key},
                }
            ]
        },
    }
    RestRunner(client, clock=time.monotonic, sleep=time.sleep).apply(guid, body)


def _probe(
    endpoint: str,
    expected: str,
    probe: Callable[[str], CertificateInfo],
    sleep: Callable[[float], None],
    cluster: str,
    label: str,
) -> None:
    served: CertificateInfo | None = None
    for attempt in range(5):
        try:
            served = probe(endpoint)
        except VerificationError:
            served = None
        if served is not None and served.fingerprint == expected:
            return
        sleep(0.2 * (attempt + 1))
    what = f"serial {served.serial}" if served else "nothing"
    raise VerificationError(
        f"{endpoint} serves {what}, not the new certificate", cluster=cluster, certificate=label
    )


def carry_to_replicas(
    state: DatabaseState,
    old_pem: str,
    new_pem: str,
    *,
    first: bool,
    clients: Mapping[str, ClusterDatabaseCertificates],
    where: str,
) -> int:
    """Every Replica Of destination (on any configured cluster) whose ``server_cert`` is the
    old certificate of this database gets the new one, every other field kept. ``first``: the
    database had no certificate of its own, so the old one is the cluster's proxy certificate
    and only entries pointing at this database's port are changed."""
    old_fp = leaf_fp(old_pem)
    port = f":{_port_of(clients[where], state.uid)}" if first else None
    updated = 0
    for name, client in clients.items():
        try:
            bdbs = client.bdbs()
        except VaultBridgeError as exc:
            raise FollowUpError(f"cluster {name}: cannot list the databases: {exc}") from exc
        for bdb in bdbs:
            entries = list(bdb.replica_sources)
            hits = [
                e
                for e in entries
                if leaf_fp(e.server_cert) == old_fp
                and (port is None or str(e.fields.get("uri", "")).endswith(port))
            ]
            if not hits:
                continue
            body = [e.as_json(server_cert=new_pem) if e in hits else e.as_json() for e in entries]
            try:
                client.update_bdb(bdb.uid, {"replica_sources": body})
            except VaultBridgeError as exc:
                raise FollowUpError(
                    f"replica {bdb.name} (uid {bdb.uid}) on {name}: new server_cert not set: {exc}"
                ) from exc
            updated += 1
            logger.info(
                "replica %s (uid %s) on %s: server_cert set to the new certificate of %s on %s",
                bdb.name,
                bdb.uid,
                name,
                state.spec.label,
                where,
            )
    return updated


def _port_of(client: ClusterDatabaseCertificates, uid: int) -> int | None:
    return client.bdb(uid).port


def database_install_known(
    cluster: ClusterSettings,
    client: ClusterDatabaseCertificates,
    label: str,
    fingerprint: str,
    probe: Callable[[str], CertificateInfo],
) -> bool | None:
    """Did an interrupted install of the certificate ``fingerprint`` for the database of
    ``label`` (``bdb:<database>``) happen? True: the read-back (``GET
    /v1/bdbs/<uid>/certificates``) shows it. False, only on positive proof: the read-back shows
    another certificate (or none) AND the database endpoint (``verify_endpoint``, where set)
    serves another. None: cannot tell (a read or a probe failed)."""
    spec = next((d for d in cluster.databases if d.label == label), None)
    if spec is None:
        return None
    try:
        bdb = next((b for b in client.bdbs() if b.name == spec.database), None)
        if bdb is None:
            return None
        back = client.bdb_certificate(bdb.uid)
    except VaultBridgeError as exc:
        logger.warning(
            "%s on %s: cannot read the database certificate: %s", label, cluster.name, exc
        )
        return None
    if back is not None and back.info.fingerprint == fingerprint:
        return True
    if spec.verify_endpoint is None:
        return False
    try:
        served = probe(spec.verify_endpoint)
    except VaultBridgeError as exc:
        logger.warning(
            "%s on %s: %s serves nothing readable: %s",
            label,
            cluster.name,
            spec.verify_endpoint,
            exc,
        )
        return None
    return False if served.fingerprint != fingerprint else None
