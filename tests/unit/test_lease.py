"""The pure decisions of high availability: lease records, take/renew, shares, preference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vault_bridge.decisions.lease import (
    Lease,
    fair_share,
    heartbeat,
    lease_action,
    live_members,
    next_lease,
    preference,
    released,
    to_release,
)

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TTL = timedelta(seconds=30)


@pytest.mark.parametrize(
    ("lease", "action"),
    [
        (Lease(), "take"),
        (Lease("me", NOW + TTL, 3, 7), "renew"),
        (Lease("other", NOW + TTL, 3, 7), "held"),
        (Lease("other", NOW - timedelta(seconds=1), 3, 7), "take"),
        (Lease("me", NOW - timedelta(seconds=1), 3, 7), "take"),  # ours but run out: anew
        (Lease(None, NOW + TTL, 3, 7), "take"),  # released
    ],
)
def test_lease_action(lease: Lease, action: str) -> None:
    assert lease_action(lease, "me", NOW) == action


def test_taking_increments_fencing_and_renewing_keeps_it() -> None:
    expired = Lease("other", NOW - timedelta(seconds=1), 3, 7)
    taken = next_lease(expired, "me", NOW, TTL)
    assert (taken.holder, taken.fencing, taken.expires_at, taken.version) == ("me", 4, NOW + TTL, 7)
    renewed = next_lease(Lease("me", NOW + timedelta(seconds=5), 4, 8), "me", NOW, TTL)
    assert (renewed.fencing, renewed.expires_at) == (4, NOW + TTL)
    with pytest.raises(ValueError, match="held by other"):
        next_lease(Lease("other", NOW + TTL, 3, 7), "me", NOW, TTL)


def test_released_keeps_fencing_and_frees() -> None:
    gone = released(Lease("me", NOW + TTL, 4, 8), NOW)
    assert gone.holder is None and gone.fencing == 4
    assert lease_action(gone, "other", NOW) == "take"


def test_record_round_trip_and_malformed_records() -> None:
    lease = Lease("me", NOW + TTL, 4, 9)
    assert Lease.from_data(lease.to_data(), 9) == lease
    assert Lease.from_data({}, 2) == Lease(version=2)
    for bad in (
        {"holder": 5, "fencing": 1},
        {"holder": "x", "fencing": "1"},
        {"holder": "x", "fencing": -1},
        {"holder": "x", "fencing": True},
        {"holder": "x", "fencing": 1, "expires_at": "yesterday"},
        {"holder": "x", "fencing": 1, "expires_at": "2026-12-01T09:00:00"},  # no timezone
    ):
        with pytest.raises(ValueError):
            Lease.from_data(bad, 1)


@pytest.mark.parametrize(
    ("clusters", "members", "shares"),
    [
        (4, ["a", "b", "c"], [2, 1, 1]),
        (2, ["a", "b", "c"], [1, 1, 0]),
        (6, ["a", "b", "c"], [2, 2, 2]),
        (3, ["a"], [3]),
        (0, ["a", "b"], [0, 0]),
    ],
)
def test_fair_shares_add_up(clusters: int, members: list[str], shares: list[int]) -> None:
    got = [fair_share(m, members, clusters) for m in members]
    assert got == shares
    assert sum(got) == clusters


def test_a_replica_missing_from_members_counts_itself() -> None:
    assert fair_share("z", ["a"], 4) == 2


def test_heartbeat_extends_ours_and_drops_the_dead() -> None:
    members = {"a": NOW + TTL, "dead": NOW - timedelta(seconds=1), "me": NOW}
    after = heartbeat(members, "me", NOW, TTL)
    assert after == {"a": NOW + TTL, "me": NOW + TTL}
    assert live_members(members, NOW) == ["a"]


def test_preference_spreads_clusters_over_replicas() -> None:
    members = ["r0", "r1", "r2"]
    clusters = [f"c{i}" for i in range(30)]
    firsts: dict[str, list[str]] = {}
    for m in members:
        order = preference(m, members, clusters)
        assert sorted(order) == sorted(clusters)
        firsts[m] = order
    # each cluster is the rendezvous winner of exactly one replica: the winners' heads of
    # list partition the clusters
    owned = {m: {c for c in clusters if max(members, key=lambda r: _w(r, c)) == m} for m in members}
    assert set().union(*owned.values()) == set(clusters)
    for m in members:
        assert set(firsts[m][: len(owned[m])]) == owned[m]
    assert all(owned.values())  # 30 clusters: nobody is left without one


def _w(replica: str, cluster: str) -> tuple[int, str]:
    import hashlib

    digest = hashlib.sha256(f"{replica}\0{cluster}".encode()).digest()[:8]
    return (int.from_bytes(digest, "big"), replica)


def test_release_only_the_excess_and_never_a_busy_cluster() -> None:
    order = ["c1", "c2", "c3", "c4"]
    assert to_release({"c1", "c2", "c3"}, 1, set(), order) == ["c3", "c2"]
    assert to_release({"c1", "c2", "c3"}, 1, {"c3"}, order) == ["c2", "c1"]
    assert to_release({"c1", "c2"}, 2, set(), order) == []
