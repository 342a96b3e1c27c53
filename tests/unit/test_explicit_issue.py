"""`issue` is the operator's command: the runaway guard never refuses it, but counts it."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from tests.unit.test_state import T0, Clock, clock, keeper, settings, spec, state_dir  # noqa: F401
from vault_bridge.config.settings import Settings
from vault_bridge.state.journal import IntentJournal, RunawayGuardError


def test_explicit_issue_passes_the_guard_and_counts_towards_it(
    keeper: IntentJournal,  # noqa: F811
    settings: Settings,  # noqa: F811
    clock: Clock,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = spec(settings, "proxy")
    with caplog.at_level(logging.WARNING):
        for _ in range(5):  # max_issues_per_hour is 3
            keeper.before_issue(proxy, explicit=True)
            clock.advance(timedelta(minutes=1))
    past = [r for r in caplog.records if "explicit issue past the runaway guard" in r.getMessage()]
    assert len(past) == 2 and all(r.levelno == logging.WARNING for r in past)
    assert keeper.state is not None
    assert len(keeper.state.record(("east", "proxy")).issued_at) == 5
    assert keeper.rotations[("east", "proxy", "blocked")] == 0
    with pytest.raises(RunawayGuardError):  # the agent's own decision is blocked
        keeper.before_issue(proxy)
    clock.now = T0 + timedelta(hours=1, minutes=5)  # the first three are out of the window
    keeper.before_issue(proxy)
