"""The follow-up window's rules (vault_bridge.decisions.followup_window) and its call order."""

from __future__ import annotations

from typing import NoReturn

import pytest

from vault_bridge.decisions.followup_window import (
    ArmedStep,
    change_errors,
    may_go,
    settle,
    still_wanted,
    window_seconds,
)
from vault_bridge.errors import FollowUpError
from vault_bridge.models.certificates import CertChange
from vault_bridge.rotation.followup_jobs import Limits
from vault_bridge.rotation.followup_step2 import Step2
from vault_bridge.rotation.followup_window import Window

EAST_PROXY = ("east", "proxy")
WEST_PROXY = ("west", "proxy")
EAST_SYNCER = ("east", "syncer")


def crdb(guid: str, *keys: tuple[str, str], **state: bool) -> ArmedStep:
    return ArmedStep("crdb", guid, tuple(sorted({c for c, _ in keys})), keys, **state)


def replica(*keys: tuple[str, str], **state: bool) -> ArmedStep:
    return ArmedStep("replica", None, tuple(sorted({c for c, _ in keys})), keys, **state)


def test_a_crdb_update_goes_once_each_changing_cluster_has_an_install() -> None:
    step = crdb("g1", EAST_PROXY, WEST_PROXY)
    assert not may_go(step, {EAST_PROXY})
    assert may_go(step, {EAST_SYNCER, WEST_PROXY})  # any install of each cluster will do
    assert still_wanted(step, {WEST_PROXY})


def test_a_database_update_needs_every_change_it_carries() -> None:
    step = replica(EAST_PROXY, WEST_PROXY)
    assert not may_go(step, {EAST_PROXY, EAST_SYNCER})
    assert may_go(step, {EAST_PROXY, WEST_PROXY})
    assert not still_wanted(step, {EAST_PROXY})


def test_settle_fires_what_is_wanted_and_replans_what_lost_its_database_update() -> None:
    steps = [
        crdb("g1", EAST_PROXY, WEST_PROXY),
        replica(EAST_PROXY, WEST_PROXY),  # west's install failed: cancelled, east replanned
        crdb("g2", EAST_PROXY, fired=True),  # went at the 200 already
        crdb("g3", WEST_PROXY),  # nothing of it made it
    ]
    out = settle(steps, [EAST_PROXY, WEST_PROXY], [EAST_PROXY])
    assert out.fire == (0,) and out.cancel == (1, 3)
    assert out.keys == ((EAST_PROXY,), (EAST_PROXY,), (EAST_PROXY,), ())
    assert out.replan == (EAST_PROXY,)
    assert out.covered_guids == {"g1", "g2"}


def test_settle_leaves_a_job_that_gave_up_waiting_and_replans_nothing_armed() -> None:
    steps = [crdb("g1", EAST_PROXY, cancelled=True)]
    out = settle(steps, [EAST_PROXY], [EAST_PROXY, EAST_SYNCER])
    assert (out.fire, out.cancel, out.covered_guids) == ((), (), frozenset())
    assert out.replan == (EAST_SYNCER,)  # east/syncer was never armed


def test_change_errors_join_every_cause() -> None:
    errors = change_errors(
        [{EAST_PROXY: "cannot read cluster west", WEST_PROXY: "not in this pass"}],
        [((EAST_PROXY,), "CRDB g1 failed"), ((EAST_PROXY, EAST_SYNCER), "replica failed")],
        {EAST_PROXY, EAST_SYNCER},
    )
    assert errors == {
        EAST_PROXY: "cannot read cluster west; CRDB g1 failed; replica failed",
        EAST_SYNCER: "replica failed",
    }


@pytest.mark.parametrize(
    ("install_at", "sent", "done", "expected"),
    [
        (10.0, [10.5, 10.2], [11.0, 12.0], {"request_sent": 0.5, "finished": 2.0}),
        (None, [10.5], [11.0], None),  # step 1 happened earlier (a replay)
        (10.0, [], [11.0], None),  # nothing was sent: no window to speak of
    ],
)
def test_window_seconds(
    install_at: float | None, sent: list[float], done: list[float], expected: object
) -> None:
    assert window_seconds(install_at, sent, done) == expected


def _no_client(name: str) -> NoReturn:
    raise AssertionError(f"no cluster may be contacted ({name})")


def test_the_window_takes_its_calls_in_order_only() -> None:
    step2 = Step2(_no_client, _no_client, clock=lambda: 0.0, sleep=lambda s: None, limits=Limits())
    window = Window(step2, {}, {}, clock=lambda: 0.0)
    window.installed("east", [])
    assert window.finish([]) == {}
    with pytest.raises(FollowUpError, match="finished: installed"):
        window.installed("east", ["proxy"])
    with pytest.raises(FollowUpError, match="finished: finish"):
        window.finish([])
    window.close()
    with pytest.raises(FollowUpError, match="closed: finish"):
        window.finish([])


def test_a_window_without_the_lock_runs_nothing() -> None:
    step2 = Step2(_no_client, _no_client, clock=lambda: 0.0, sleep=lambda s: None, limits=Limits())
    window = Window(
        step2, {}, {}, clock=lambda: 0.0, refused={"east": "locked"}, unavailable="locked"
    )
    assert window.refused == {"east": "locked"}
    change = CertChange("east", "proxy", "new", "old")
    assert window.finish([change]) == {EAST_PROXY: "locked"}
