"""The locked one-shot pass of the CLI (`run --once`, `issue`) and its handoff to a running agent.

:func:`rotate_once` takes the state directory's lock and does what an agent step does: the
journal replay, one pass, due revocations. When a running agent holds the lock, the request is
written to ``requests/`` in the state directory, the agent is woken with SIGUSR1, and its
answer (:func:`result_json`, written by the agent) is read back with :func:`result_from_json`.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from vault_bridge.adapters.ports import Monotonic, Sleep
from vault_bridge.agent.revocation import queue_replaced_logins, revoke_due
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.renewal import CertStatus
from vault_bridge.errors import ConfigError, StateError
from vault_bridge.models.times import iso_or_none, parse_iso, utc_now
from vault_bridge.rotation.app import AppPorts, build
from vault_bridge.rotation.hooks import RotationHooks
from vault_bridge.rotation.results import Outcome, PassResult
from vault_bridge.state.journal import Clock, IntentJournal
from vault_bridge.state.records import Key, key_text
from vault_bridge.state.store import LockHeld, StateDir

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 900.0  # how long `issue` waits for a running agent's answer


def with_retry_state(
    settings: Settings, statuses: Sequence[CertStatus], now: datetime
) -> list[CertStatus]:
    """``statuses`` with the last error and the next attempt the agent keeps in its state
    file (read without the lock; nothing is written). Without a readable state, the next
    attempt is the renewal time and there is no last error."""
    try:
        state = StateDir(settings.agent.state_dir).load()
    except StateError as exc:
        logger.warning("status: no retry state: %s", exc)
        state = None
    out = []
    for status in statuses:
        backoff = state.record((status.cluster, status.name)).backoff if state else None
        failing = backoff is not None and backoff.failures > 0
        next_attempt = backoff.next_attempt if failing and backoff else status.renew_at
        out.append(
            replace(
                status,
                last_error=backoff.last_error if failing and backoff else None,
                next_attempt=max(next_attempt, now) if next_attempt else None,
            )
        )
    return out


class BuildApp(Protocol):
    """Makes the executor and its adapters for one pass: :func:`vault_bridge.rotation.app.build`."""

    def __call__(
        self, settings: Settings, *, clock: Clock, hooks: RotationHooks
    ) -> AbstractContextManager[AppPorts]: ...


def result_json(result: PassResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "summary": result.summary(),
        "outcomes": [
            {
                "cluster": o.cluster,
                "name": o.name,
                "result": o.result,
                "serial": o.serial,
                "not_after": iso_or_none(o.not_after),
                "error": o.error,
                "reason": o.reason,
                "note": o.note,
            }
            for o in result.outcomes
        ],
        "cluster_errors": dict(result.cluster_errors),
    }


def result_from_json(data: dict[str, Any]) -> PassResult:
    result = PassResult()
    for item in data.get("outcomes") or ():
        not_after = item.get("not_after")
        result.outcomes.append(
            Outcome(
                cluster=str(item["cluster"]),
                name=str(item["name"]),
                result=str(item["result"]),
                serial=item.get("serial"),
                not_after=parse_iso(not_after) if not_after else None,
                error=item.get("error"),
                reason=str(item.get("reason") or ""),
                note=item.get("note"),
            )
        )
    result.cluster_errors.update(
        {str(k): str(v) for k, v in (data.get("cluster_errors") or {}).items()}
    )
    return result


def rotate_once(
    settings: Settings,
    *,
    force: Iterable[Key] = (),
    only: set[Key] | None = None,
    lock_wait: float = 300.0,
    answer_wait: float = REQUEST_TIMEOUT,
    clock: Clock = utc_now,
    build_app: BuildApp = build,
    monotonic: Monotonic = time.monotonic,
    sleep: Sleep = time.sleep,
    kill: Callable[[int, int], None] = os.kill,
) -> PassResult:
    """One pass under the state directory's lock (`run --once`, `issue`).

    When a running agent holds the lock, the request is handed to it through the state
    directory (``requests/``, then SIGUSR1 through ``kill``) and its answer awaited; another
    one-shot pass holding it is waited for. Raises :class:`StateError` when neither works out.
    """
    forced = set(force)
    state_dir = StateDir(settings.agent.state_dir)
    state_dir.ensure()
    deadline = monotonic() + lock_wait
    while True:
        try:
            with state_dir.locked("cli"):
                if settings.ha is not None:
                    # The state is in Vault and the clusters are led by the replicas: a pass
                    # of its own here would bypass their leases.
                    raise ConfigError(
                        "ha: with [ha], `run --once` and `issue` go through a running replica "
                        f"(`vault-bridge run` on the state directory {state_dir.path}); none "
                        "runs there"
                    )
                return _rotate_locked(settings, state_dir, forced, only, clock, build_app)
        except LockHeld as exc:
            if exc.agent_pid is not None:
                request = {
                    "kind": "issue" if forced else "run",
                    "targets": sorted(forced),
                }
                return _hand_over(
                    state_dir,
                    exc.agent_pid,
                    request,
                    answer_wait,
                    monotonic=monotonic,
                    sleep=sleep,
                    kill=kill,
                )
            if monotonic() >= deadline:
                raise
            sleep(0.2)


def _rotate_locked(
    settings: Settings,
    state_dir: StateDir,
    force: set[Key],
    only: set[Key] | None,
    clock: Clock,
    build_app: BuildApp,
) -> PassResult:
    keeper = IntentJournal(state_dir, settings, clock=clock)
    keeper.load()
    with build_app(settings, clock=clock, hooks=keeper) as app:
        pending = keeper.replay(app.rotator)  # what a killed agent or pass left: first
        if pending:
            logger.warning("journal entries still pending: %s", ", ".join(map(key_text, pending)))
        held = keeper.blocked_by_journal(clock())
        if only is None and held:
            only = {(s.cluster, s.name.value) for s in settings.specs()} - held
        result = app.rotator.run_once(force=force, only=only)
        keeper.replay(app.rotator)
        if settings.ha is None:  # with [ha], replaced login certificates expire on their own
            queue_replaced_logins(keeper, app.rotator.logins.values(), across_restarts=True)
        revoke_due(
            keeper,
            app.vault,
            enabled=settings.agent.revoke_superseded,
            rng=random.Random(),
            blocked_for=settings.agent.resync_interval,
        )
    return result


def _hand_over(
    state_dir: StateDir,
    pid: int,
    request: dict[str, Any],
    timeout: float,
    *,
    monotonic: Monotonic,
    sleep: Sleep,
    kill: Callable[[int, int], None],
) -> PassResult:
    request_id = state_dir.submit(request)
    logger.info("the agent (pid %s) runs: handing it the request and waiting for its answer", pid)
    try:
        kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        state_dir.withdraw(request_id)
        raise StateError(f"the agent (pid {pid}) is gone; try again") from None
    deadline = monotonic() + timeout
    while True:
        answer = state_dir.read_result(request_id)
        if answer is not None:
            return result_from_json(answer)
        alive = state_dir.agent_pid() == pid
        if not alive or monotonic() >= deadline:
            answer = state_dir.read_result(request_id)
            if answer is not None:
                return result_from_json(answer)
            withdrawn = state_dir.withdraw(request_id)
            what = "stopped before answering" if not alive else f"did not answer in {timeout:.0f}s"
            note = "" if withdrawn else " (it may still carry the request out)"
            raise StateError(f"the agent (pid {pid}) {what}{note}")
        sleep(0.1)
