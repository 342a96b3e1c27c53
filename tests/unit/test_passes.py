"""The agent's passes through the ports: how a failure is classified (policy, rejected token,
outage, cluster, the pass itself, deferred), the backoffs it leads to, and the permission
blocks. Fake Vault, fake clusters, fake clock; the journal in a temporary state directory."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_ca
from tests.fakes.cluster import add_crdb
from tests.fakes.world import FakeApp, World, make_settings
from vault_bridge.agent.passes import AgentRotator, Passes
from vault_bridge.decisions.schedule import INITIAL_BACKOFF, JITTER
from vault_bridge.errors import StateError, VaultPermissionError, VaultUnavailableError
from vault_bridge.rotation.results import Change
from vault_bridge.state.journal import IntentJournal
from vault_bridge.state.store import StateDir

KEY = ("east", "cm")
DENIED = "permission denied: the policy needs 'update' on pki_int/sign/redis"


@dataclass
class Agent:
    w: World
    keeper: IntentJournal
    passes: Passes
    app: FakeApp

    @property
    def backoff(self) -> Any:
        assert self.keeper.state is not None
        return self.keeper.state.record(KEY).backoff

    def sign_calls(self) -> int:
        return self.w.vault.calls.count("sign")


class FailingInstallJournal(IntentJournal):
    def before_install(self, cluster: str, changes: Sequence[Change]) -> None:
        raise StateError("cannot write state.json: no space left on the device")


class FailingAfterInstallJournal(IntentJournal):
    def installed(self, changes: Sequence[Change]) -> None:
        raise StateError("cannot write state.json: no space left on the device")


def agent(
    tmp_path: Path,
    certificates: Sequence[str] = ("cm",),
    *,
    keeper_cls: type[IntentJournal] = IntentJournal,
    followups: bool = False,
    stopping: bool = False,
    **agent_keys: Any,
) -> Agent:
    w = World(make_settings(tmp_path / "state", ("east",), certificates, agent=agent_keys))
    state_dir = StateDir(w.settings.agent.state_dir)
    state_dir.ensure()
    holder: list[Passes] = []
    keeper = keeper_cls(
        state_dir,
        w.settings,
        clock=w.clock,
        stopping=lambda: stopping,
        on_installed=lambda c: holder[0].installed(c),
    )
    keeper.load()
    passes = Passes(w.settings, keeper, clock=w.clock, rng=random.Random(7))
    holder.append(passes)
    rotator = w.rotator(
        hooks=keeper, cls=AgentRotator, followups=w.followups() if followups else None
    )
    return Agent(w, keeper, passes, FakeApp(rotator, w.vault))


def test_a_pass_installs_and_remembers_the_renewal_time(tmp_path: Path) -> None:
    a = agent(tmp_path)
    now = a.w.clock()
    assert a.passes.due(now)
    result = a.passes.run(a.app)
    assert result.ok and [o.result for o in result.outcomes] == ["installed"]
    view = a.passes.views[KEY]
    assert view.state == "ok" and view.renew_at is not None and view.renew_at > now
    assert not a.passes.due(now)  # nothing left to do until the resync or the renewal
    assert a.passes.due(now + timedelta(minutes=10))  # resync_interval
    assert [s.condition for s in a.passes.samples(now)] == ["True"]
    assert a.passes.reasons() == []


def test_a_missing_policy_capability_blocks_the_certificate_until_the_resync(
    tmp_path: Path,
) -> None:
    a = agent(tmp_path)
    a.w.vault.fail["sign"] = [VaultPermissionError(DENIED, status=403)]
    start = a.w.clock()
    result = a.passes.run(a.app)
    assert [o.result for o in result.outcomes] == ["failed"]
    until, error = a.passes.permission[KEY]
    assert until == start + timedelta(minutes=10) and "policy needs 'update'" in error
    assert any("policy needs 'update'" in r for r in a.passes.reasons())
    assert a.keeper.rotations[("east", "cm", "failure")] == 1
    assert a.backoff.failures == 0  # a configuration error, not something to retry soon
    # blocked: a pass now does not ask Vault again
    a.w.clock.advance(timedelta(minutes=5))
    a.passes.pass_now = True
    a.passes.run(a.app)
    assert a.sign_calls() == 1
    # once the block is over it is tried again (the policy may have been fixed)
    a.w.clock.advance(timedelta(minutes=5))
    result = a.passes.run(a.app)
    assert [o.result for o in result.outcomes] == ["installed"]
    assert KEY not in a.passes.permission and a.sign_calls() == 2


def test_a_reload_lifts_the_permission_block(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.w.vault.fail["sign"] = [VaultPermissionError(DENIED, status=403)]
    a.passes.run(a.app)
    assert KEY in a.passes.permission
    a.passes.reload(a.w.settings)
    assert a.passes.permission == {} and a.passes.due(a.w.clock())
    assert [o.result for o in a.passes.run(a.app).outcomes] == ["installed"]


def test_a_403_from_a_rejected_token_is_retried_with_the_usual_backoff(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.w.vault.token_rejected = True
    a.w.vault.fail["sign"] = [VaultPermissionError("permission denied", status=403)]
    a.passes.run(a.app)
    assert KEY not in a.passes.permission
    assert a.w.vault.logins == 2  # the token was looked up and replaced
    assert a.backoff.failures == 1


def test_an_outage_backs_off_and_grows(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.w.vault.fail["sign"] = [VaultUnavailableError("Vault is unavailable: sealed")] * 2
    start = a.w.clock()
    a.passes.run(a.app)
    first = a.backoff
    assert first.failures == 1 and "sealed" in first.last_error
    delay = first.next_attempt - start
    assert INITIAL_BACKOFF * (1 - JITTER) <= delay <= INITIAL_BACKOFF
    assert not a.passes.due(start + delay / 2)
    a.passes.pass_now = True
    a.passes.run(a.app)  # a pass before the retry time leaves the certificate alone
    assert a.sign_calls() == 1
    a.w.clock.advance(delay)
    assert a.passes.due(a.w.clock())
    a.passes.run(a.app)
    second = a.backoff
    assert second.failures == 2
    assert second.next_attempt - a.w.clock() >= 2 * INITIAL_BACKOFF * (1 - JITTER)
    a.w.clock.advance(second.next_attempt - a.w.clock())
    assert [o.result for o in a.passes.run(a.app).outcomes] == ["installed"]
    assert a.backoff.failures == 0


def test_a_cluster_that_stops_answering_backs_off_as_a_whole(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.passes.run(a.app)
    east = a.w.clusters["east"]
    east.fail["GET /v1/cluster/certificates"] = [east.error(503, "the node is not answering")]
    a.w.clock.advance(timedelta(minutes=10))
    result = a.passes.run(a.app)
    assert "east" in result.cluster_errors
    backoff = a.passes.cluster_backoff["east"]
    assert backoff.failures == 1 and backoff.next_attempt is not None
    assert not a.passes.views[KEY].answered
    assert [s.condition for s in a.passes.samples(a.w.clock())] == ["Unknown"]
    assert any(r.startswith("cluster east:") for r in a.passes.reasons())
    a.w.clock.advance(timedelta(minutes=10))
    a.passes.run(a.app)
    assert "east" not in a.passes.cluster_backoff and a.passes.reasons() == []


def test_an_intent_that_cannot_be_recorded_fails_its_certificates_only(tmp_path: Path) -> None:
    a = agent(tmp_path, keeper_cls=FailingInstallJournal)
    result = a.passes.run(a.app)
    assert [o.result for o in result.outcomes] == ["failed"]
    assert "not installed" in (result.outcomes[0].error or "")
    assert "no space left" in (result.outcomes[0].error or "")
    assert not any("PUT" in e for e in a.w.clusters["east"].events)  # nothing was sent
    assert a.backoff.failures == 1


def test_a_failure_outside_any_certificate_backs_off_the_pass(tmp_path: Path) -> None:
    a = agent(tmp_path, keeper_cls=FailingAfterInstallJournal)
    start = a.w.clock()
    result = a.passes.run(a.app)
    assert "no space left" in result.cluster_errors["*"]
    backoff = a.passes.pass_backoff
    assert backoff.failures == 1 and backoff.next_attempt is not None
    assert not a.passes.due(start) and a.passes.due(backoff.next_attempt)
    assert any("no space left" in r for r in a.passes.reasons())


def test_a_stopping_agent_counts_no_failure(tmp_path: Path) -> None:
    a = agent(tmp_path, stopping=True)
    result = a.passes.run(a.app)
    assert [o.result for o in result.outcomes] == ["failed"]
    assert a.keeper.rotations[("east", "cm", "failure")] == 0
    assert a.backoff.failures == 0 and a.sign_calls() == 0


def test_the_runaway_guard_blocks_without_counting_a_failure(tmp_path: Path) -> None:
    a = agent(tmp_path, max_issues_per_hour=1)
    a.passes.run(a.app, force=[KEY], only={KEY})  # the operator's issue counts towards it
    a.w.clock.advance(timedelta(minutes=1))
    foreign, _ = make_ca("Someone Else").leaf()
    a.w.clusters["east"].install_pem("cm", foreign)  # replaced by hand: the agent's own decision
    result = a.passes.run(a.app)
    assert "runaway guard" in (result.failed[0].error or "")
    assert a.keeper.rotations[("east", "cm", "failure")] == 0 and a.backoff.failures == 0
    tracked = {t.key: t for t in a.passes.tracked(a.w.clock())}
    assert tracked[KEY].blocked_until == a.keeper.runaway[KEY]


def test_follow_ups_that_fail_back_off_the_journal_replay(tmp_path: Path) -> None:
    a = agent(tmp_path, ("proxy",), followups=True)
    east = a.w.clusters["east"]
    add_crdb("guid-orders", "orders", [east])
    east.task_scripts["guid-orders"] = [["failed"]]
    result = a.passes.run(a.app)
    assert "follow-up failed" in (result.failed[0].error or "")
    assert a.keeper.state is not None and ("east", "proxy") in a.keeper.state.pending
    assert a.passes.replay_backoff.failures == 1
    assert a.keeper.state.record(("east", "proxy")).backoff.failures == 0
    # the replay runs step 2 again; once it works, the change is complete
    east.task_scripts["guid-orders"] = [["finished"]]
    a.passes.replay(a.app)
    assert a.keeper.state.pending == {} and a.passes.replay_backoff.failures == 0


def test_a_foreign_certificate_left_in_place_is_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = agent(tmp_path, replace_foreign=False)
    a.w.install_foreign("east", "cm")
    result = a.passes.run(a.app)
    assert result.outcomes == [] and a.sign_calls() == 0
    assert a.passes.views[KEY].state == "foreign" and a.backoff.failures == 0
    assert "not issued by our Vault (foreign) (left in place: replace_foreign)" in caplog.text
    assert [s.condition for s in a.passes.samples(a.w.clock())] == ["False"]


def test_a_403_whose_token_check_fails_too_counts_as_the_policy(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.w.vault.ensure_token()
    a.w.vault.fail["sign"] = [VaultPermissionError(DENIED, status=403)]
    a.w.vault.fail["ensure_token"] = [None, VaultUnavailableError("Vault is unavailable")]
    a.passes.run(a.app)
    assert KEY in a.passes.permission


def test_a_replay_that_still_fails_backs_off_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = agent(tmp_path, ("proxy",), followups=True)
    east = a.w.clusters["east"]
    add_crdb("guid-orders", "orders", [east])
    east.task_scripts["guid-orders"] = [["failed"]]
    a.passes.run(a.app)
    first = a.passes.replay_backoff.next_attempt
    assert first is not None
    a.w.clock.advance(first - a.w.clock())
    a.passes.replay(a.app)
    assert a.passes.replay_backoff.failures == 2
    assert "journal: 1 entry still pending" in caplog.text
