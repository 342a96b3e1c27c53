"""High availability, decided purely: lease records, who may take or renew one, fair shares.

A lease (one per Redis Enterprise cluster, one per Active-Active database while its follow-ups
run) is a KV v2 record ``{"holder", "expires_at", "fencing"}`` written with check-and-set on
the version read. These functions take that record, the replica's id and the current time and
say what to write; :mod:`vault_bridge.agent.ha` does the I/O.

Balancing: every replica keeps a heartbeat in a shared members record; the clusters are split
so that each live replica leads ``clusters // replicas`` of them, the first ``clusters %
replicas`` replicas (by id) one more. Each replica prefers the clusters that rendezvous hashing
gives it (highest SHA-256 of replica id and cluster name among the live replicas), so replicas
rarely race for the same lease and a cluster returns to the same replica after a restart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from vault_bridge.models.times import iso_or_none, parse_iso

LeaseAction = Literal["renew", "take", "held"]


def _time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 time, got {value!r}")
    return parse_iso(value)


@dataclass(frozen=True)
class Lease:
    """A lease record as read from KV (``version`` 0: none written yet)."""

    holder: str | None = None
    expires_at: datetime | None = None
    fencing: int = 0
    version: int = 0

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | None, version: int) -> Lease:
        """Parse a record; raises ``ValueError`` for one that is not a lease (never taken
        then: nothing is done on an answer that proves nothing)."""
        if not data:
            return cls(version=version)
        holder = data.get("holder")
        if holder is not None and (not isinstance(holder, str) or not holder):
            raise ValueError(f"holder: expected a replica id or null, got {holder!r}")
        fencing = data.get("fencing")
        if not isinstance(fencing, int) or isinstance(fencing, bool) or fencing < 0:
            raise ValueError(f"fencing: expected a counter, got {fencing!r}")
        expires = data.get("expires_at")
        return cls(holder, _time(expires) if expires is not None else None, fencing, version)

    def to_data(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "expires_at": iso_or_none(self.expires_at),
            "fencing": self.fencing,
        }

    def live(self, now: datetime) -> bool:
        """Held by someone whose expiry has not passed."""
        return self.holder is not None and self.expires_at is not None and now < self.expires_at

    def leader(self, now: datetime) -> str | None:
        return self.holder if self.live(now) else None


def lease_action(lease: Lease, me: str, now: datetime) -> LeaseAction:
    """``renew`` our live lease, ``take`` a free or expired one, or leave one ``held`` by
    another replica alone. Our own expired lease is taken again (a new fencing value): what we
    knew under the old one may be stale."""
    if lease.live(now):
        return "renew" if lease.holder == me else "held"
    return "take"


def next_lease(lease: Lease, me: str, now: datetime, ttl: timedelta) -> Lease:
    """The record to write (with ``cas`` = ``lease.version``) to renew or take ``lease``."""
    action = lease_action(lease, me, now)
    if action == "held":
        raise ValueError(f"the lease is held by {lease.holder}")
    fencing = lease.fencing if action == "renew" else lease.fencing + 1
    return Lease(me, now + ttl, fencing, lease.version)


def released(lease: Lease, now: datetime) -> Lease:
    """The record that gives our lease up (same fencing: the next holder increments it)."""
    return Lease(None, now, lease.fencing, lease.version)


# -- members and fair shares -----------------------------------------------------------------


def live_members(members: Mapping[str, datetime], now: datetime) -> list[str]:
    return sorted(m for m, expires in members.items() if expires > now)


def heartbeat(
    members: Mapping[str, datetime], me: str, now: datetime, ttl: timedelta
) -> dict[str, datetime]:
    """The members record after our heartbeat: ours extended, expired ones dropped."""
    out = {m: t for m, t in members.items() if t > now and m != me}
    out[me] = now + ttl
    return out


def without(members: Mapping[str, datetime], me: str) -> dict[str, datetime]:
    return {m: t for m, t in members.items() if m != me}


def fair_share(me: str, members: Iterable[str], clusters: int) -> int:
    """How many clusters ``me`` leads when ``members`` are alive: the clusters split evenly,
    the first ``clusters % n`` replicas by id taking one more (the shares add up to all)."""
    ids = sorted({*members, me})
    base, extra = divmod(clusters, len(ids))
    return base + (1 if ids.index(me) < extra else 0)


def _weight(replica: str, cluster: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{replica}\0{cluster}".encode()).digest()[:8], "big")


def preference(me: str, members: Iterable[str], clusters: Iterable[str]) -> list[str]:
    """The clusters in the order ``me`` tries them: first those rendezvous hashing assigns to
    ``me`` among ``members``, then the others, each group by ``me``'s weight."""
    ids = sorted({*members, me})

    def key(cluster: str) -> tuple[int, int]:
        mine = _weight(me, cluster)
        owner = max(ids, key=lambda r: (_weight(r, cluster), r))
        return (0 if owner == me else 1, -mine)

    return sorted(clusters, key=key)


def to_release(
    held: Collection[str], share: int, busy: Collection[str], order: Sequence[str]
) -> list[str]:
    """Leases to give up to come down to ``share``: the least preferred first, never one
    whose cluster has a change in flight (``busy``)."""
    excess = len(held) - share
    if excess <= 0:
        return []
    candidates = [c for c in reversed(order) if c in held and c not in busy]
    return candidates[:excess]
