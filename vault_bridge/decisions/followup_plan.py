"""What the Active-Active and Replica Of follow-ups must do: a pure function of plain values.

:func:`plan_followups` takes the certificate changes and what discovery read from every
configured cluster (:class:`ClusterView`) and returns a :class:`FollowUpPlan`; the executor in
:mod:`vault_bridge.rotation.followups` carries it out. Databases are found by the *old* certificate's
fingerprint, so the plan is the same when it is made again after a restart (idempotent: a
database already holding the new certificate is not in it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vault_bridge.config.schema import CrdbUpdate
from vault_bridge.errors import CertificateError
from vault_bridge.models.certificates import CertChange, CertificateInfo, CertName
from vault_bridge.models.cluster import Bdb, Crdb, UnsafeReplicaUpdate

Key = tuple[str, str]  # (cluster, certificate name)


def leaf_fp(pem: str | None) -> str | None:
    """SHA-256 fingerprint of the first certificate of a PEM; None when absent or unparseable."""
    if not pem or not pem.strip():
        return None
    try:
        return CertificateInfo.from_pem(pem).fingerprint
    except CertificateError:
        return None


def subject(pem: str) -> str:
    try:
        return CertificateInfo.from_pem(pem).subject
    except CertificateError:
        return "an unreadable certificate"


class WaitingOn(str):
    """A follow-up error that belongs to other clusters (``clusters``, unreadable): the change
    itself went well where it could be checked and stays pending until they can be read."""

    clusters: tuple[str, ...]

    def __new__(cls, text: str, clusters: tuple[str, ...]) -> WaitingOn:
        made = super().__new__(cls, text)
        made.clusters = clusters
        return made


@dataclass(frozen=True)
class ClusterView:
    """What discovery read from one configured cluster (public data only)."""

    name: str
    crdbs: tuple[Crdb, ...] = ()
    bdbs: tuple[Bdb, ...] = ()
    proxy_pem: str | None = None
    syncer_pem: str | None = None
    error: str | None = None  # discovery failed: nothing above is known


@dataclass(frozen=True)
class CrdbStep2:
    """``crdb update --force`` of one CRDB, run once through ``via`` for every changed cluster."""

    guid: str
    name: str
    via: str
    clusters: tuple[str, ...]  # the changed clusters with an instance of it


@dataclass(frozen=True)
class ServerCertUpdate:
    """Replica Of after a source's proxy changed: the destination's whole ``replica_sources``."""

    cluster: str  # where the destination database is
    uid: int
    name: str
    replica_sources: tuple[Mapping[str, Any], ...] = field(repr=False)  # uri, client_key: secret
    causes: tuple[Key, ...]


@dataclass(frozen=True)
class ReplicaRef:
    cluster: str
    uid: int
    name: str
    source_cert_fps: frozenset[str]  # server_cert fingerprints that point at the source


@dataclass(frozen=True)
class ClientCertUpdate:
    """Replica Of after a destination's syncer changed: the source trusts the new certificate,
    then forgets the old one once the replicas are ``in-sync``."""

    cluster: str  # where the source database is
    uid: int
    name: str
    new_pem: str
    old_fp: str
    add: bool  # False: the new one is there already (a replay)
    replicas: tuple[ReplicaRef, ...]  # the destination databases to watch
    cause: Key


@dataclass(frozen=True)
class FollowUpPlan:
    crdb_updates: tuple[CrdbStep2, ...] = ()
    server_cert_updates: tuple[ServerCertUpdate, ...] = ()
    client_cert_updates: tuple[ClientCertUpdate, ...] = ()
    warnings: tuple[str, ...] = ()
    errors: Mapping[Key, str] = field(default_factory=dict)  # follow-ups that cannot be planned

    @property
    def empty(self) -> bool:
        return not (self.crdb_updates or self.server_cert_updates or self.client_cert_updates)


def crdb_guids(view: ClusterView) -> tuple[dict[str, str], list[str]]:
    """The CRDBs with an instance on the cluster: GUID -> name, from ``GET /v1/crdbs``
    (``local_databases``) cross-checked with ``crdt_guid`` on ``GET /v1/bdbs``; the union is
    taken and each disagreement becomes a warning."""
    listed = {c.guid: c.name for c in view.crdbs if c.local_bdb_uids}
    by_bdb = {b.crdt_guid: b.name for b in view.bdbs if b.crdt and b.crdt_guid}
    warnings = [
        f"cluster {view.name}: CRDB {guid} ({name}) lists a local database, but no database "
        f"has crdt_guid {guid}; updating it anyway"
        for guid, name in listed.items()
        if guid not in by_bdb
    ]
    warnings += [
        f"cluster {view.name}: database {name} has crdt_guid {guid}, which GET /v1/crdbs does "
        f"not list; updating it anyway"
        for guid, name in by_bdb.items()
        if guid not in listed
    ]
    return {**by_bdb, **listed}, warnings


def plan_crdb_updates(
    clusters: Sequence[str],
    views: Mapping[str, ClusterView],
    modes: Mapping[str, CrdbUpdate],
) -> tuple[list[CrdbStep2], list[str]]:
    """One step 2 per CRDB with an instance on any of ``clusters`` (in configuration order),
    run through the first of them whose ``crdb_update`` is not ``none``."""
    participants: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    warnings: list[str] = []
    for cluster in clusters:
        view = views[cluster]
        guids, mismatch = crdb_guids(view)
        warnings += mismatch
        for guid, name in guids.items():
            participants.setdefault(guid, []).append(cluster)
            names.setdefault(guid, name)
    steps = []
    for guid, members in participants.items():
        via = next((c for c in members if modes.get(c, "rest") != "none"), None)
        if via is None:
            warnings.append(
                f"CRDB {guid} ({names[guid]}) has an instance on {', '.join(members)} "
                f"(crdb_update = none): run `crdb-cli crdb update --crdb-guid {guid} --force` "
                f"now"
            )
            continue
        steps.append(CrdbStep2(guid, names[guid], via, tuple(members)))
    return steps, warnings


def plan_followups(
    changes: Sequence[CertChange],
    views: Mapping[str, ClusterView],
    modes: Mapping[str, CrdbUpdate],
) -> FollowUpPlan:
    """Everything the follow-ups of ``changes`` must do, given every configured cluster's view."""
    errors: dict[Key, str] = {}
    warnings: list[str] = []
    unreadable = sorted(name for name, view in views.items() if view.error)
    for change in changes:
        key = (change.cluster, change.name)
        if change.cluster in unreadable:
            errors[key] = f"cannot read cluster {change.cluster}: {views[change.cluster].error}"
        elif unreadable:
            # A replica on an unreadable cluster would be missed: the change stays pending,
            # but the failure is that cluster's, not this one's.
            errors[key] = WaitingOn(
                f"follow-ups of {change.name} on {change.cluster} wait until the databases of "
                + ", ".join(f"{n} ({views[n].error})" for n in unreadable)
                + " can be read",
                tuple(unreadable),
            )
    followup = [c for c in changes if CertName(c.name).needs_followup]
    changed = [c for c in views if any(ch.cluster == c for ch in followup)]
    readable_changed = [c for c in changed if not views[c].error]
    crdb_steps, crdb_warnings = plan_crdb_updates(readable_changed, views, modes)
    warnings += crdb_warnings

    readable = {n: v for n, v in views.items() if not v.error}
    proxies = _fps(readable, followup, "proxy")
    syncers = _fps(readable, followup, "syncer")

    server_updates = _server_cert_updates(followup, readable, warnings, syncers, errors)
    client_updates = _client_cert_updates(followup, readable, warnings, proxies)
    return FollowUpPlan(
        tuple(crdb_steps),
        tuple(server_updates),
        tuple(client_updates),
        tuple(warnings),
        errors,
    )


def _fps(
    views: Mapping[str, ClusterView], changes: Sequence[CertChange], name: str
) -> dict[str, set[str]]:
    """Fingerprints of each managed cluster's ``name`` certificate: current, old and new."""
    out: dict[str, set[str]] = {}
    for cluster, view in views.items():
        pem = view.proxy_pem if name == "proxy" else view.syncer_pem
        out[cluster] = {fp for fp in (leaf_fp(pem),) if fp}
    for change in changes:
        if change.name == name:
            found = {leaf_fp(change.old_pem), leaf_fp(change.new_pem)}
            out.setdefault(change.cluster, set()).update(fp for fp in found if fp)
    return out


def _server_cert_updates(
    changes: Sequence[CertChange],
    views: Mapping[str, ClusterView],
    warnings: list[str],
    syncers: Mapping[str, set[str]],
    errors: dict[Key, str],
) -> list[ServerCertUpdate]:
    """After a source's proxy changed: destinations whose server_cert is the old proxy cert
    (a database whose entries cannot be sent back safely is an error of its causes)."""
    replace: dict[str, tuple[str, Key]] = {}  # old proxy fp -> (new pem, change)
    for change in changes:
        if change.name != CertName.PROXY:
            continue
        old = leaf_fp(change.old_pem)
        if old is None:
            continue  # no old certificate: no replica can point at it
        replace[old] = (change.new_pem, (change.cluster, change.name))
        _warn_unmanaged_destinations(change, views, warnings, syncers)
    updates = []
    for cluster, view in views.items():
        for bdb in view.bdbs:
            hits = [replace.get(leaf_fp(e.server_cert) or "") for e in bdb.replica_sources]
            causes = [hit[1] for hit in hits if hit is not None]
            if not causes:
                continue
            try:
                entries = [
                    entry.as_json() if hit is None else entry.as_json(server_cert=hit[0])
                    for entry, hit in zip(bdb.replica_sources, hits, strict=True)
                ]
            except UnsafeReplicaUpdate as exc:
                for cause in causes:
                    errors[cause] = (
                        f"replica {bdb.name} (uid {bdb.uid}) on {cluster} not updated: {exc}; "
                        f"set its server_cert by hand"
                    )
                continue
            if causes:
                updates.append(
                    ServerCertUpdate(cluster, bdb.uid, bdb.name, tuple(entries), tuple(causes))
                )
    return updates


def _warn_unmanaged_destinations(
    change: CertChange,
    views: Mapping[str, ClusterView],
    warnings: list[str],
    syncers: Mapping[str, set[str]],
) -> None:
    """A source database on the changed cluster trusting a syncer certificate of no managed
    cluster has a replica that vault_bridge cannot update."""
    view = views.get(change.cluster)
    if view is None:
        return
    managed = set().union(*syncers.values()) if syncers else set()
    for bdb in view.bdbs:
        foreign = [c for c in bdb.authentication_ssl_client_certs if leaf_fp(c) not in managed]
        if foreign:
            warnings.append(
                f"database {bdb.name} (uid {bdb.uid}) on {change.cluster} has a replica on a "
                f"cluster vault_bridge does not manage (syncer certificate "
                f"{'; '.join(subject(c) for c in foreign)}): set that replica's "
                f"replica_sources server_cert to the new proxy certificate of "
                f"{change.cluster} by hand"
            )


def _client_cert_updates(
    changes: Sequence[CertChange],
    views: Mapping[str, ClusterView],
    warnings: list[str],
    proxies: Mapping[str, set[str]],
) -> list[ClientCertUpdate]:
    """After a destination's syncer changed: sources trusting the old syncer certificate."""
    updates = []
    for change in changes:
        if change.name != CertName.SYNCER:
            continue
        key = (change.cluster, change.name)
        old = leaf_fp(change.old_pem)
        new = leaf_fp(change.new_pem)
        if old is None or new is None or old == new:
            continue
        for cluster, view in views.items():
            for bdb in view.bdbs:
                fps = [leaf_fp(c) for c in bdb.authentication_ssl_client_certs]
                if old not in fps:
                    continue
                updates.append(
                    ClientCertUpdate(
                        cluster,
                        bdb.uid,
                        bdb.name,
                        change.new_pem,
                        old,
                        add=new not in fps,
                        replicas=_replicas_of(views.get(change.cluster), proxies.get(cluster)),
                        cause=key,
                    )
                )
        destination = views.get(change.cluster)
        if destination is not None:
            managed = set().union(*proxies.values()) if proxies else set()
            for bdb in destination.bdbs:
                for entry in bdb.replica_sources:
                    if leaf_fp(entry.server_cert) not in managed:
                        warnings.append(
                            f"replica {bdb.name} (uid {bdb.uid}) on {change.cluster} replicates "
                            f"from a cluster vault_bridge does not manage (proxy certificate "
                            f"{subject(entry.server_cert)}): add the new syncer certificate of "
                            f"{change.cluster} to the source database's "
                            f"authentication_ssl_client_certs by hand"
                        )
    return updates


def _replicas_of(
    destination: ClusterView | None, source_fps: set[str] | None
) -> tuple[ReplicaRef, ...]:
    """The databases on the destination cluster replicating from the source cluster."""
    if destination is None or not source_fps:
        return ()
    refs = []
    for bdb in destination.bdbs:
        if any(leaf_fp(e.server_cert) in source_fps for e in bdb.replica_sources):
            refs.append(ReplicaRef(destination.name, bdb.uid, bdb.name, frozenset(source_fps)))
    return tuple(refs)
