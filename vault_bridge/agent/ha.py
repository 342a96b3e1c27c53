"""High availability: replicas coordinated through Vault, each cluster led by exactly one.

With ``[ha]``, every replica (``vault-bridge run``) keeps, in Vault's KV version 2 engine under
``<kv_mount>/data/<path>/``:

- ``lease/members``: a heartbeat per live replica (to split the fleet into fair shares);
- ``lease/cluster/<cluster>``: the lease of each Redis Enterprise cluster (holder, expiry,
  fencing counter); only the holder rotates that cluster;
- ``lease/crdb/<guid>``: the lock of an Active-Active database, held from before step 1 on any
  of its clusters until its step 2 is over, so that no other replica installs in between;
- ``state/<cluster>``: the cluster's state (:mod:`vault_bridge.state.kv_store`).

Each lease is taken and renewed with check-and-set on the version read; taking one increments
its fencing counter. :class:`Coordinator` renews what it holds from a thread of its own (every
``lease_ttl / 3``), so a long pass keeps its leases. A lease counts as held only until the
local deadline ``sent + lease_ttl - lease_ttl / 5`` of the last renewal that succeeded
(measured on ``CLOCK_BOOTTIME``, which also runs while the process is stopped or the host
suspended), and before every state write, install and step 2 request the lease is read afresh
(:meth:`Coordinator.prove`): a replica that cannot prove it still holds it writes and sends
nothing. The decisions (take, renew, release, fair shares) are
:mod:`vault_bridge.decisions.lease`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from vault_bridge.adapters.vault.client import VaultClient
from vault_bridge.adapters.vault.kv import KvStore, KvV2
from vault_bridge.config.schema import HaConfig
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.lease import (
    Lease,
    fair_share,
    heartbeat,
    live_members,
    next_lease,
    preference,
    released,
    to_release,
    without,
)
from vault_bridge.errors import CasConflictError, LeaseLostError, StateError, VaultBridgeError
from vault_bridge.models.times import iso, utc_now
from vault_bridge.rotation.app import vault_client
from vault_bridge.state.journal import IntentJournal
from vault_bridge.state.kv_store import KvStateStore, drop_cluster, merge_part

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
CRDB_POLL = 0.2  # seconds between two tries of a CRDB lock held by another replica


def boottime() -> float:
    """Seconds on a clock that keeps running while the process is stopped or the host sleeps."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


@dataclass(frozen=True)
class Held:
    """A lease this replica holds: what it wrote last, and until when that proves anything."""

    fencing: int
    version: int
    valid_until: float  # on the local clock
    expires_at: datetime


def lease_path(prefix: str, kind: str, name: str) -> str:
    return f"{prefix}/lease/{kind}/{quote(name, safe='')}"


def read_leases(kv: KvStore, ha: HaConfig, clusters: Sequence[str]) -> dict[str, Lease | None]:
    """Each cluster's lease as recorded (None: unreadable or malformed), for ``status``."""
    out: dict[str, Lease | None] = {}
    for cluster in clusters:
        try:
            entry = kv.read(lease_path(ha.path, "cluster", cluster))
            out[cluster] = Lease.from_data(entry.data, entry.version) if entry else Lease()
        except (VaultBridgeError, ValueError) as exc:
            logger.warning("cannot read the lease of cluster %s: %s", cluster, exc)
            out[cluster] = None
    return out


class Coordinator:
    """The leases of one replica: membership, cluster leases, CRDB locks, and the fence the
    state store and the follow-ups check."""

    def __init__(
        self,
        settings: Settings,
        kv: KvStore,
        *,
        clock: Clock = utc_now,
        local: Callable[[], float] = boottime,
    ) -> None:
        assert settings.ha is not None
        self.settings = settings
        self.config = settings.ha
        self.kv = kv
        self.clock = clock
        self.local = local
        self.prefix = self.config.path
        self.ttl = self.config.ttl
        self.interval = self.ttl / 3
        self.margin = self.ttl / 5
        self.crdb_wait = 2 * self.ttl.total_seconds()  # for a CRDB lock another replica holds
        self.store = KvStateStore(kv, self.prefix, self)
        self.held: dict[str, Held] = {}
        self.crdb_held: dict[str, Held] = {}
        self.members: dict[str, datetime] = {}
        self.registered = False
        self.error: str | None = None  # why the last heartbeat failed
        self.failures: Counter[str] = Counter()  # lease renewal failures by cluster
        self.skip_until: dict[str, datetime] = {}  # clusters whose state could not be claimed
        self.settle_until: datetime | None = None
        self._io = threading.RLock()  # one KV conversation at a time; guards held/crdb_held
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = utc_now) -> Coordinator:
        """With its own Vault login: the renewals never wait for a pass's Vault requests."""
        assert settings.ha is not None
        vault: VaultClient = vault_client(settings, clock)
        return cls(settings, KvV2(vault, settings.ha.kv_mount), clock=clock)

    @property
    def replica_id(self) -> str:
        return self.config.replica_id

    def __repr__(self) -> str:
        return f"Coordinator({self.replica_id!r}, leads {sorted(self.held)})"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Register, then renew from a thread of its own until :meth:`close`."""
        logger.info(
            "high availability: replica %s, leases in %s/data/%s (lease_ttl %s)",
            self.replica_id,
            self.kv.mount,
            self.prefix,
            self.config.lease_ttl,
        )
        self.upkeep()
        self._thread = threading.Thread(target=self._loop, name="vault-bridge-ha", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval.total_seconds()):
            try:
                self.upkeep()
            except Exception:  # the thread must outlive any bug; the deadline keeps us safe
                logger.exception("high availability: lease upkeep failed")

    def close(self) -> None:
        """Stop renewing, give every lease up and leave the members (a clean stop hands the
        clusters over at once instead of after ``lease_ttl``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval.total_seconds() + 15)
        with self._io:
            for cluster in sorted(self.held):
                self._release("cluster", cluster, self.held[cluster])
            for guid in sorted(self.crdb_held):
                self._release("crdb", guid, self.crdb_held[guid])
            self.held.clear()
            self.crdb_held.clear()
            try:
                self._update_members(lambda members: without(members, self.replica_id))
            except VaultBridgeError as exc:
                logger.debug("leaving the members: %s", exc)
        self.kv.close()

    # -- the upkeep thread -------------------------------------------------------------------

    def upkeep(self) -> None:
        """Heartbeat, then renew every lease and lock held."""
        now = self.clock()
        try:
            self._update_members(lambda m: heartbeat(m, self.replica_id, now, self.ttl))
            if not self.registered:
                self.settle_until = now + self.interval
                logger.info("high availability: replica %s registered", self.replica_id)
            self.registered = True
            self.error = None
        except VaultBridgeError as exc:
            if self.error != str(exc):
                logger.warning("high availability: heartbeat failed: %s", exc)
            self.error = str(exc)
        with self._io:
            for cluster in sorted(self.held):
                self._renew("cluster", cluster)
            for guid in sorted(self.crdb_held):
                self._renew("crdb", guid)

    def _update_members(self, change: Callable[[dict[str, datetime]], dict[str, datetime]]) -> None:
        path = f"{self.prefix}/lease/members"
        for attempt in range(5):
            with self._io:
                entry = self.kv.read(path)
                members = _members(entry.data if entry else {})
                new = change(members)
                try:
                    self.kv.write(
                        path,
                        {"members": {m: iso(t) for m, t in sorted(new.items())}},
                        cas=entry.version if entry else 0,
                    )
                except CasConflictError:
                    if attempt == 4:
                        raise
                    continue
                self.members = new
                return

    def _renew(self, kind: str, name: str) -> None:
        table = self.held if kind == "cluster" else self.crdb_held
        held = table[name]
        now = self.clock()
        sent = self.local()
        path = lease_path(self.prefix, kind, name)
        record = Lease(self.replica_id, now + self.ttl, held.fencing, held.version)
        try:
            try:
                version = self.kv.write(path, record.to_data(), cas=held.version)
            except CasConflictError:
                # Our last write may have gone in unanswered: still ours if it says so.
                current = self._read(path)
                if not (
                    current.holder == self.replica_id
                    and current.fencing == held.fencing
                    and current.live(now)
                ):
                    self._lost(kind, name, current)
                    return
                version = self.kv.write(path, record.to_data(), cas=current.version)
        except (VaultBridgeError, ValueError) as exc:
            if kind == "cluster":
                self.failures[name] += 1
            left = held.valid_until - self.local()
            logger.warning(
                "high availability: renewing the lease of %s %s failed (%s); %s",
                kind,
                name,
                exc,
                f"it proves nothing after {left:.1f}s more" if left > 0 else "it has run out",
                extra={"cluster": name} if kind == "cluster" else {},
            )
            return
        table[name] = Held(held.fencing, version, sent + self._validity(), now + self.ttl)

    def _validity(self) -> float:
        return (self.ttl - self.margin).total_seconds()

    def _read(self, path: str) -> Lease:
        entry = self.kv.read(path)
        return Lease.from_data(entry.data, entry.version) if entry else Lease()

    def _lost(self, kind: str, name: str, current: Lease | None = None) -> None:
        table = self.held if kind == "cluster" else self.crdb_held
        if table.pop(name, None) is None:
            return
        if kind == "cluster":
            self.store.forget(name)  # not one more write; the next step drops its state
        holder = current.holder if current is not None else None
        logger.warning(
            "high availability: lost the lease of %s %s%s; nothing more is written or sent for it",
            kind,
            name,
            f" (now held by {holder})" if holder else "",
            extra={"cluster": name} if kind == "cluster" else {},
        )

    def _release(self, kind: str, name: str, held: Held) -> None:
        path = lease_path(self.prefix, kind, name)
        lease = Lease(self.replica_id, held.expires_at, held.fencing, held.version)
        try:
            self.kv.write(path, released(lease, self.clock()).to_data(), cas=held.version)
        except VaultBridgeError as exc:  # it expires by itself
            logger.debug("releasing the lease of %s %s: %s", kind, name, exc)
            return
        logger.info("high availability: released the lease of %s %s", kind, name)

    # -- taking leases -----------------------------------------------------------------------

    def _take(self, kind: str, name: str) -> Lease | None:
        """Take ``name``'s lease when it is free or expired; the lease as written, or None.
        A lease this replica already held is taken anew (new fencing value) too."""
        path = lease_path(self.prefix, kind, name)
        now = self.clock()
        sent = self.local()
        try:
            current = self._read(path)
        except ValueError as exc:
            logger.error("high availability: %s: not a lease, left alone: %s", path, exc)
            return None
        if current.live(now) and current.holder != self.replica_id:
            return None
        taken = next_lease(
            Lease(None, None, current.fencing, current.version), self.replica_id, now, self.ttl
        )
        try:
            version = self.kv.write(path, taken.to_data(), cas=current.version)
        except CasConflictError:
            return None  # another replica was quicker
        table = self.held if kind == "cluster" else self.crdb_held
        table[name] = Held(taken.fencing, version, sent + self._validity(), taken.expires_at or now)
        return taken

    # -- the main thread's step --------------------------------------------------------------

    def step(self, keeper: IntentJournal) -> bool:
        """Between passes: forget the clusters whose lease is gone, give up what exceeds the
        fair share (never a cluster with a change in flight), take free leases up to it and
        claim their state. True when a cluster was taken (a pass is due at once)."""
        state = keeper.state
        if state is None:
            return False
        now = self.clock()
        with self._io:
            for cluster in sorted((self.store.claimed | state.clusters()) - self.led()):
                # Lost, or run out unrenewed (Vault down): what we knew may be stale. It is
                # taken anew (a new fencing value) and its state read again, or not at all.
                self.held.pop(cluster, None)
                self._drop(keeper, cluster)
            clusters = [c.name for c in self.settings.clusters]
            members = live_members(self.members, now) if self.registered else [self.replica_id]
            share = fair_share(self.replica_id, members, len(clusters))
            order = preference(self.replica_id, members, clusters)
            busy = {k[0] for k in (*state.journal, *state.pending)}
            gone = [c for c in sorted(self.held) if c not in clusters]  # no longer configured
            for cluster in [*gone, *to_release(self.led(), share, busy, order)]:
                self._release("cluster", cluster, self.held.pop(cluster))
                self._drop(keeper, cluster)
            if not self.registered or (self.settle_until and now < self.settle_until):
                return False
            taken = False
            for cluster in order:
                if len(self.held) >= share:
                    break
                if cluster in self.held or now < self.skip_until.get(cluster, now):
                    continue
                try:
                    lease = self._take("cluster", cluster)
                except VaultBridgeError as exc:
                    logger.warning("high availability: cannot take a lease: %s", exc)
                    break
                if lease is None:
                    continue
                try:
                    part = self.store.claim(cluster, lease.fencing)
                except StateError as exc:
                    logger.error("high availability: cluster %s: %s", cluster, exc)
                    self._release("cluster", cluster, self.held.pop(cluster))
                    self.store.forget(cluster)
                    self.skip_until[cluster] = now + timedelta(minutes=1)
                    continue
                merge_part(state, cluster, part)
                taken = True
                logger.info(
                    "high availability: this replica leads cluster %s now (fencing %d, lease "
                    "until %s)",
                    cluster,
                    lease.fencing,
                    iso(lease.expires_at),
                    extra={"cluster": cluster},
                )
            return taken

    def _drop(self, keeper: IntentJournal, cluster: str) -> None:
        self.store.forget(cluster)
        if keeper.state is not None:
            drop_cluster(keeper.state, cluster)
        logger.info(
            "high availability: this replica no longer leads cluster %s",
            cluster,
            extra={"cluster": cluster},
        )

    def next_step_at(self, now: datetime) -> datetime:
        return now + self.interval

    # -- the fence ---------------------------------------------------------------------------

    def leads(self, cluster: str) -> bool:
        """Held, and the last renewal still proves it. No I/O and no lock: a renewal that
        hangs on Vault never stalls the pass (reading one dict entry is atomic)."""
        held = self.held.get(cluster)
        return held is not None and self.local() < held.valid_until

    def led(self) -> set[str]:
        now = self.local()
        return {c for c, h in list(self.held.items()) if now < h.valid_until}

    def prove(self, cluster: str) -> int:
        """Read ``cluster``'s lease afresh: ours, same fencing value, local deadline not
        passed. Returns the fencing value; raises :class:`LeaseLostError`."""
        return self._prove("cluster", cluster)

    def _prove(self, kind: str, name: str) -> int:
        table = self.held if kind == "cluster" else self.crdb_held
        with self._io:
            held = table.get(name)
            if held is None:
                raise LeaseLostError(f"this replica does not hold the lease of {kind} {name}")
            try:
                current = self._read(lease_path(self.prefix, kind, name))
            except (VaultBridgeError, ValueError) as exc:
                raise LeaseLostError(
                    f"cannot prove the lease of {kind} {name} is still ours: {exc}"
                ) from exc
            if current.holder != self.replica_id or current.fencing != held.fencing:
                self._lost(kind, name, current)
                raise LeaseLostError(
                    f"the lease of {kind} {name} is held by {current.holder or 'nobody'} "
                    f"(fencing {current.fencing}, ours was {held.fencing})"
                )
            if self.local() >= held.valid_until:
                raise LeaseLostError(
                    f"the lease of {kind} {name} was not renewed in time; not acting on it"
                )
            return held.fencing

    def lost(self, cluster: str) -> None:
        with self._io:
            self._lost("cluster", cluster)

    # -- CRDB locks (the follow-ups' CrdbLocks) ------------------------------------------------

    def acquire_crdbs(self, guids: Sequence[str]) -> dict[str, str]:
        """Take the lock of every CRDB in ``guids``, waiting (up to two ``lease_ttl``) for
        one held by another replica; returns, by GUID, why a lock could not be had."""
        deadline = self.local() + self.crdb_wait
        errors: dict[str, str] = {}
        for guid in sorted(set(guids)):
            while True:
                with self._io:
                    if guid in self.crdb_held:
                        break
                    try:
                        if self._take("crdb", guid) is not None:
                            break
                        current = self._read(lease_path(self.prefix, "crdb", guid))
                    except (VaultBridgeError, ValueError) as exc:
                        errors[guid] = f"cannot take the lock of CRDB {guid}: {exc}"
                        break
                if self.local() >= deadline:
                    errors[guid] = (
                        f"CRDB {guid} is locked by replica {current.holder} until "
                        f"{iso(current.expires_at)} "
                        "(its follow-ups are running); not installing in between"
                    )
                    break
                time.sleep(CRDB_POLL)
        return errors

    def prove_crdb(self, guid: str) -> None:
        self._prove("crdb", guid)

    def release_crdbs(self) -> None:
        with self._io:
            for guid in sorted(self.crdb_held):
                self._release("crdb", guid, self.crdb_held.pop(guid))

    # -- health --------------------------------------------------------------------------------

    def leaders(self) -> dict[str, bool]:
        """Every configured cluster: does this replica lead it?"""
        led = self.led()
        return {c.name: c.name in led for c in self.settings.clusters}

    def reasons(self) -> list[str]:
        if not self.registered:
            return [f"high availability: not registered in Vault yet: {self.error or 'starting'}"]
        return []


def _members(data: Mapping[str, Any]) -> dict[str, datetime]:
    raw = data.get("members")
    out: dict[str, datetime] = {}
    if not isinstance(raw, dict):
        return out
    for member, expires in raw.items():
        try:
            lease = Lease.from_data({"holder": member, "expires_at": expires, "fencing": 0}, 0)
        except ValueError:
            continue  # a malformed entry counts as no member
        if lease.expires_at is not None:
            out[str(member)] = lease.expires_at
    return out
