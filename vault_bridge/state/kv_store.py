"""The agent's state in Vault's KV version 2 engine, for replicas in high availability.

One record per Redis Enterprise cluster at ``<kv_mount>/data/<path>/state/<cluster>``::

    {"fencing": 7, "writer": "<replica id>", "state": <that cluster's part of state.json>}

holding what ``state.json`` holds for that cluster (certificates, superseded certificates,
intent journal). Only the replica that leads a cluster writes its record, and every write

- proves the lease first (a fresh read of the lease: holder and fencing counter are ours and
  its local deadline has not passed), and
- uses check-and-set on the version this replica last read or wrote, so a replica that was
  paused while another took over (and *claimed* the record, writing its own fencing value)
  fails instead of overwriting newer state.

Only clusters whose part changed are written. The store keeps :class:`State` as the
:class:`~vault_bridge.state.journal.IntentJournal` sees it (the clusters this replica leads);
:mod:`vault_bridge.agent.ha` claims a cluster's part when it wins the lease and drops it
when the lease is gone. Public data only, as in ``state.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import quote

from vault_bridge.adapters.vault.kv import KvStore
from vault_bridge.errors import CasConflictError, LeaseLostError, StateError, VaultError
from vault_bridge.state.records import State

logger = logging.getLogger(__name__)


class Fence(Protocol):
    """What the store needs to know of the leases (:class:`vault_bridge.agent.ha.Coordinator`)."""

    @property
    def replica_id(self) -> str: ...

    def prove(self, cluster: str) -> int:
        """A fresh proof that this replica holds ``cluster``'s lease: its fencing value, or
        :class:`LeaseLostError`."""
        ...

    def lost(self, cluster: str) -> None:
        """``cluster``'s lease turned out to be gone (a write lost its check-and-set)."""
        ...


def cluster_part(state: State, cluster: str) -> State:
    """The part of ``state`` that belongs to ``cluster`` (what :meth:`State.to_json` writes
    for it)."""
    return State.from_json(state.to_json(cluster))


def drop_cluster(state: State, cluster: str) -> None:
    """Forget everything of ``cluster`` (its lease is gone: another replica knows better)."""
    state.certificates = {k: v for k, v in state.certificates.items() if k[0] != cluster}
    state.superseded = [e for e in state.superseded if e.cluster != cluster]
    state.journal = {k: v for k, v in state.journal.items() if k[0] != cluster}
    state.pending = {k: v for k, v in state.pending.items() if k[0] != cluster}


def merge_part(state: State, cluster: str, part: State) -> None:
    """Replace ``cluster``'s part of ``state`` with ``part``."""
    drop_cluster(state, cluster)
    state.merge(cluster_part(part, cluster))  # a record never speaks for another cluster


def _text(part: State) -> str:
    return json.dumps(part.to_json(), sort_keys=True)


class KvStateStore:
    """``load`` / ``save`` of the :class:`~vault_bridge.state.journal.IntentJournal`, in KV v2."""

    def __init__(self, kv: KvStore, prefix: str, fence: Fence) -> None:
        self.kv = kv
        self.prefix = prefix.strip("/")
        self.fence = fence
        self._versions: dict[str, int] = {}  # claimed clusters: the version last read/written
        self._written: dict[str, str] = {}  # what that version holds

    def __repr__(self) -> str:
        return f"KvStateStore({self.kv.mount}/data/{self.prefix}/state)"

    def path(self, cluster: str) -> str:
        return f"{self.prefix}/state/{quote(cluster, safe='')}"

    @property
    def state_path(self) -> str:
        """Where the state is, for log lines."""
        return f"{self.kv.mount}/data/{self.prefix}/state/<cluster>"

    @property
    def claimed(self) -> set[str]:
        return set(self._versions)

    # -- a cluster's record --------------------------------------------------------------------

    def read(self, cluster: str) -> tuple[State, int, int]:
        """``cluster``'s part, the record's version and the fencing value that wrote it
        (an empty part at version 0 when there is no record yet)."""
        path = self.path(cluster)
        try:
            entry = self.kv.read(path)
        except VaultError as exc:
            raise StateError(
                f"cannot read the state of cluster {cluster} from Vault: {exc}"
            ) from exc
        if entry is None or not entry.data:
            return State(), entry.version if entry else 0, 0
        try:
            fencing = entry.data.get("fencing")
            if not isinstance(fencing, int) or isinstance(fencing, bool):
                raise ValueError(f"fencing: expected a counter, got {fencing!r}")
            part = State.from_json(entry.data.get("state"))
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"the state of cluster {cluster} in Vault ({self.kv.mount}/data/{path}, version "
                f"{entry.version}) is corrupt ({type(exc).__name__}: {exc}); it is left as it "
                "is and the cluster is not rotated until it is repaired"
            ) from exc
        return part, entry.version, fencing

    def claim(self, cluster: str, fencing: int) -> State:
        """Just won ``cluster``'s lease with ``fencing``: read its part and write it back with
        our fencing value, so that a replica that held the lease before can no longer write
        (its next check-and-set fails). Returns the part."""
        part, version, written_by = self.read(cluster)
        if written_by > fencing:
            raise LeaseLostError(
                f"the state of cluster {cluster} was written under fencing value {written_by}, "
                f"newer than our lease's {fencing}"
            )
        self._versions[cluster] = version
        self._written[cluster] = ""  # force the write
        self._write(cluster, part, fencing)
        return part

    def forget(self, cluster: str) -> None:
        """The lease of ``cluster`` is gone: never write its record again without a claim."""
        self._versions.pop(cluster, None)
        self._written.pop(cluster, None)

    # -- the IntentJournal's interface ------------------------------------------------------------------

    def load(self) -> State:
        """The parts of the clusters claimed so far (none at the start), read afresh."""
        state = State()
        for cluster in sorted(self._versions):
            part, version, _ = self.read(cluster)
            self._versions[cluster] = version
            self._written[cluster] = _text(part)
            merge_part(state, cluster, part)
        return state

    def save(self, state: State, clusters: Iterable[str] | None = None) -> None:
        """Write the part of every claimed cluster that changed (of ``clusters`` only, when
        given: a step of a rotation touches one), each after a fresh proof of its lease.
        Raises :class:`StateError` (:class:`LeaseLostError` for a lost lease, and for a
        cluster in ``state`` that is not claimed: its lease was lost, and whatever changed
        for it must not be acted on)."""
        wanted = state.clusters() if clusters is None else set(clusters)
        for cluster in sorted(wanted - set(self._versions)):
            raise LeaseLostError(
                f"this replica no longer leads cluster {cluster}: nothing is written for it",
                cluster=cluster,
            )
        targets = self._versions if clusters is None else wanted
        for cluster in sorted(targets):
            part = cluster_part(state, cluster)
            if _text(part) == self._written.get(cluster):
                continue
            fencing = self.fence.prove(cluster)
            self._write(cluster, part, fencing)

    def _write(self, cluster: str, part: State, fencing: int) -> None:
        record: dict[str, Any] = {
            "fencing": fencing,
            "writer": self.fence.replica_id,
            "state": part.to_json(),
        }
        try:
            version = self.kv.write(self.path(cluster), record, cas=self._versions[cluster])
        except CasConflictError as exc:
            self.forget(cluster)
            self.fence.lost(cluster)
            raise LeaseLostError(
                f"the state of cluster {cluster} was written by another replica: this one no "
                "longer leads it, and writes nothing more for it",
                cluster=cluster,
            ) from exc
        except VaultError as exc:
            raise StateError(
                f"cannot write the state of cluster {cluster} to Vault: {exc}; nothing is "
                "issued until it works",
                cluster=cluster,
            ) from exc
        self._versions[cluster] = version
        self._written[cluster] = _text(part)
