"""High availability in the follow-ups: the per-CRDB lock taken before step 1 and released
after step 2, and the proof of it right before each step 2 request (real OpenBao, simulated
clusters, the real rotation path; the replicas' lock replaced by a recording one)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from vault_bridge_lab.lab import cluster_table, lab_config
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import DatabaseWorld, SimulatedCluster

from vault_bridge.config.loading import parse_config
from vault_bridge.errors import LeaseLostError
from vault_bridge.rotation.app import build
from vault_bridge.rotation.followups import FollowUps, Limits

pytestmark = [pytest.mark.usefixtures("lab_env"), pytest.mark.timeout(120)]

FAST = Limits(retry_delay=0.05, in_flight_wait=5.0, in_sync_wait=5.0, task_timeout=10.0)


class Locks:
    """The replicas' CRDB locks as the follow-ups see them, recording every call."""

    def __init__(self, *, refuse: Sequence[str] = (), lost: bool = False) -> None:
        self.refuse = set(refuse)
        self.lost = lost
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def acquire_crdbs(self, guids: Sequence[str]) -> dict[str, str]:
        self.calls.append(("acquire", tuple(guids)))
        return {g: f"CRDB {g} is locked by replica other" for g in guids if g in self.refuse}

    def prove_crdb(self, guid: str) -> None:
        self.calls.append(("prove", (guid,)))
        if self.lost:
            raise LeaseLostError(f"the lease of crdb {guid} is held by other")

    def release_crdbs(self) -> None:
        self.calls.append(("release", ()))


@pytest.fixture
def east() -> Iterator[SimulatedCluster]:
    with SimulatedCluster("east", world=DatabaseWorld(run_time=0.02)) as sim:
        yield sim


def rotate(
    openbao: OpenBaoServer, pki: PkiSetup, tmp_path: Path, sim: SimulatedCluster, locks: Locks
) -> tuple[list[str], list[str]]:
    """One pass rotating ``proxy``; the errors of its outcomes and the step 2 requests."""
    table = cluster_table(sim, tmp_path, role="redis", names=("proxy",))
    settings = parse_config(
        lab_config(
            openbao,
            pki,
            [table],
            state_dir=tmp_path / "state",
            defaults={"key_type": "ec", "key_bits": 256},
        )
    )
    followups = FollowUps(settings, None, limits=FAST, crdb_locks=locks)
    with build(settings, sleep=lambda s: None, followups=followups) as app:
        result = app.rotator.run_once()
    errors = [o.error or "" for o in result.outcomes if o.result == "failed"]
    posts = [r.path for r in sim.requests if r.method == "POST" and "/updates" in r.path]
    return errors, posts


def test_the_crdb_lock_is_taken_before_the_install_and_released_after_step_2(
    openbao: OpenBaoServer, pki: PkiSetup, tmp_path: Path, east: SimulatedCluster
) -> None:
    guid = east.add_crdb("one")
    locks = Locks()
    errors, posts = rotate(openbao, pki, tmp_path, east, locks)
    assert errors == []
    assert posts == [f"/v1/crdbs/{guid}/updates"]
    kinds = [c[0] for c in locks.calls]
    assert kinds[:3] == ["acquire", "prove", "release"]
    assert set(kinds[3:]) <= {"release"}  # released again at the end of the pass: idempotent
    assert locks.calls[0] == ("acquire", (guid,))


def test_a_crdb_locked_by_another_replica_keeps_its_clusters_from_installing(
    openbao: OpenBaoServer, pki: PkiSetup, tmp_path: Path, east: SimulatedCluster
) -> None:
    guid = east.add_crdb("one")
    errors, posts = rotate(openbao, pki, tmp_path, east, Locks(refuse=[guid]))
    assert east.install_count == 0
    assert posts == []
    assert len(errors) == 1 and "locked by replica other" in errors[0], errors


def test_no_step_2_request_without_proof_of_the_lock(
    openbao: OpenBaoServer, pki: PkiSetup, tmp_path: Path, east: SimulatedCluster
) -> None:
    east.add_crdb("one")
    locks = Locks(lost=True)
    errors, posts = rotate(openbao, pki, tmp_path, east, locks)
    assert east.install_count == 1  # the lock was had before step 1
    assert posts == []  # lost by the time step 2 went: nothing sent
    assert len(errors) == 1 and "held by other" in errors[0], errors
    assert locks.calls[-1] == ("release", ())
