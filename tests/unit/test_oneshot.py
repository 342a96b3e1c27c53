"""The CLI's one-shot pass (:func:`rotate_once`): under the state directory's lock through the
ports, or handed to the running agent (request file, SIGUSR1, answer file) - with the signal,
the sleep and the clock injected, so the agent's side is played by the test."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path

import pytest

from tests.fakes.world import FakeApp, World, make_settings
from vault_bridge.agent.oneshot import result_from_json, result_json, rotate_once
from vault_bridge.config.settings import Settings
from vault_bridge.errors import StateError
from vault_bridge.rotation.app import AppPorts
from vault_bridge.rotation.hooks import RotationHooks
from vault_bridge.rotation.results import Outcome, PassResult
from vault_bridge.state.journal import IntentJournal
from vault_bridge.state.records import Intent
from vault_bridge.state.store import LockHeld, StateDir

KEY = ("east", "cm")


@pytest.fixture
def w(tmp_path: Path) -> World:
    return World(make_settings(tmp_path / "state", certificates=("cm",)))


def builder(w: World) -> Callable[..., AbstractContextManager[AppPorts]]:
    def build_app(
        settings: Settings, *, clock: object, hooks: RotationHooks
    ) -> AbstractContextManager[AppPorts]:
        return FakeApp(w.rotator(hooks=hooks), w.vault)

    return build_app


@contextlib.contextmanager
def held(w: World, *, agent: bool) -> Iterator[StateDir]:
    """The state directory locked by "another process" (an agent, with its pid file)."""
    state_dir = StateDir(w.settings.agent.state_dir)
    state_dir.ensure()
    with state_dir.locked("agent" if agent else "cli"):
        if agent:
            state_dir.write_pid()
        yield state_dir


def answer() -> PassResult:
    result = PassResult()
    result.outcomes.append(Outcome("east", "cm", "installed", "0a:0b", None, None, "forced"))
    return result


def test_locked_pass_replays_the_journal_rotates_and_revokes_the_orphan(w: World) -> None:
    state_dir = StateDir(w.settings.agent.state_dir)
    state_dir.ensure()
    keeper = IntentJournal(state_dir, w.settings, clock=w.clock)
    state = keeper.load()
    now = w.clock()
    orphan = w.leaf(w.vault.ca("pki_int"), "cm.east.example.com")
    state.journal_issued(
        Intent(
            "east",
            "cm",
            "issued",
            "0c:0d",
            now + timedelta(days=30),
            "pki_int",
            orphan,
            None,
            started_at=now,
        )
    )
    keeper.save()
    result = rotate_once(w.settings, clock=w.clock, build_app=builder(w))
    assert [(o.name, o.result) for o in result.outcomes] == [("cm", "installed")]
    saved = state_dir.load()
    assert saved.journal == {} and saved.record(KEY).serial == result.outcomes[0].serial
    assert ("pki_int", "0c:0d") in w.vault.revoked  # never installed: revoked at once


def test_a_request_is_handed_to_the_running_agent(w: World) -> None:
    signals: list[tuple[int, int]] = []
    with held(w, agent=True) as state_dir:

        def kill(pid: int, sig: int) -> None:  # the agent wakes up and answers
            signals.append((pid, sig))
            (request,) = state_dir.take_requests()
            assert request["kind"] == "issue" and request["targets"] == [list(KEY)]
            state_dir.write_result(str(request["id"]), result_json(answer()))

        result = rotate_once(
            w.settings,
            force=[KEY],
            only={KEY},
            build_app=builder(w),
            kill=kill,
            sleep=w.clock.sleep,
            monotonic=w.clock.monotonic,
        )
    assert signals == [(os.getpid(), signal.SIGUSR1)]
    assert result_json(result) == result_json(answer())
    assert w.vault.calls == []  # the agent did the work, not this process


def test_the_answer_is_awaited(w: World) -> None:
    with held(w, agent=True) as state_dir:
        requests: list[str] = []

        def kill(pid: int, sig: int) -> None:
            requests.extend(str(r["id"]) for r in state_dir.take_requests())

        def sleep(seconds: float) -> None:
            w.clock.sleep(seconds)
            if len(w.clock.slept) == 3:
                state_dir.write_result(requests[0], result_json(answer()))

        result = rotate_once(
            w.settings, kill=kill, sleep=sleep, monotonic=w.clock.monotonic, build_app=builder(w)
        )
    assert result.outcomes[0].serial == "0a:0b" and w.clock.slept == [0.1, 0.1, 0.1]


def requests_left(w: World) -> list[str]:
    return sorted(p.name for p in (Path(w.settings.agent.state_dir) / "requests").iterdir())


def test_an_agent_that_is_gone_gets_no_request(w: World) -> None:
    def kill(pid: int, sig: int) -> None:
        raise ProcessLookupError

    with held(w, agent=True), pytest.raises(StateError, match=r"is gone; try again"):
        rotate_once(w.settings, kill=kill, sleep=w.clock.sleep, monotonic=w.clock.monotonic)
    assert requests_left(w) == []


def test_an_agent_that_does_not_answer_in_time(w: World) -> None:
    with held(w, agent=True), pytest.raises(StateError, match=r"did not answer in 5s$"):
        rotate_once(
            w.settings,
            answer_wait=5.0,
            kill=lambda pid, sig: None,
            sleep=w.clock.sleep,
            monotonic=w.clock.monotonic,
        )
    assert requests_left(w) == []  # withdrawn: it will not be carried out later
    assert 5.0 <= w.clock.monotonic() < 5.2


def test_an_agent_that_took_the_request_and_stopped(w: World) -> None:
    with held(w, agent=True) as state_dir:

        def kill(pid: int, sig: int) -> None:
            state_dir.take_requests()
            state_dir.clear_pid()  # it exits

        with pytest.raises(StateError, match=r"stopped before answering \(it may still"):
            rotate_once(w.settings, kill=kill, sleep=w.clock.sleep, monotonic=w.clock.monotonic)


def test_another_one_shot_pass_is_waited_for_then_gives_up(w: World) -> None:
    with held(w, agent=False), pytest.raises(LockHeld, match="another vault-bridge process"):
        rotate_once(w.settings, lock_wait=1.0, sleep=w.clock.sleep, monotonic=w.clock.monotonic)
    assert w.clock.slept == [0.2] * 5


def test_the_pass_goes_ahead_once_the_other_one_shot_pass_is_done(w: World) -> None:
    stack = contextlib.ExitStack()
    stack.enter_context(held(w, agent=False))

    def sleep(seconds: float) -> None:
        w.clock.sleep(seconds)
        stack.close()  # the other pass ends

    result = rotate_once(
        w.settings,
        clock=w.clock,
        build_app=builder(w),
        sleep=sleep,
        monotonic=w.clock.monotonic,
    )
    assert w.clock.slept == [0.2]
    assert [(o.name, o.result) for o in result.outcomes] == [("cm", "installed")]


def test_the_answer_survives_its_json_round_trip(w: World) -> None:
    result = answer()
    result.cluster_errors["west"] = "cannot reach the cluster"
    again = result_from_json(result_json(result))
    assert again.outcomes == result.outcomes and again.cluster_errors == result.cluster_errors
    assert again.summary() == result.summary()


def test_what_the_journal_cannot_resolve_yet_is_left_out_of_the_pass(w: World) -> None:
    state_dir = StateDir(w.settings.agent.state_dir)
    state_dir.ensure()
    keeper = IntentJournal(state_dir, w.settings, clock=w.clock)
    state = keeper.load()
    now = w.clock()
    sent = w.leaf(w.vault.ca("pki_int"), "cm.east.example.com")
    state.journal_installing(
        Intent(
            "east",
            "cm",
            "installing",
            "0e:0f",
            now + timedelta(days=30),
            "pki_int",
            sent,
            None,
            started_at=now,
        )
    )
    keeper.save()
    east = w.clusters["east"]
    # what the cm listener serves: another certificate (proof that ours is not in use)
    east.served_pems["cm"] = w.leaf(w.vault.ca("pki_int"), "cm.east.example.com")
    east.serve_lag = 1
    east.fail["GET /v1/cluster/certificates"] = [east.error(503, "the node is not answering")]
    result = rotate_once(w.settings, clock=w.clock, build_app=builder(w))
    assert result.outcomes == [] and w.vault.calls.count("sign") == 0
    # the second replay, after the pass, read the cluster: the install never happened
    assert ("pki_int", "0e:0f") in w.vault.revoked and state_dir.load().journal == {}
