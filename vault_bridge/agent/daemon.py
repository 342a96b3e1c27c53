"""The long-running agent (`vault-bridge run`): sleeps until the next deadline, then takes a step.

The agent sleeps until the earliest deadline (a renewal, a retry, a revocation, the token's
renewal, the periodic resync) and then takes one *step*: token upkeep, the journal replay,
requests from the CLI, a reconcile pass, due revocations. Signals only set flags and wake it:

- SIGHUP: reload the configuration (a bad one is logged and the current one kept);
- SIGUSR1: a CLI request is waiting in the state directory;
- SIGTERM / SIGINT: finish the step in progress (an install is never separated from its
  follow-ups), save the state, exit 0 - or exit 1 if that takes longer than ``stop_grace``.

Decisions are in :mod:`vault_bridge.decisions.schedule` and :mod:`vault_bridge.decisions.renewal`; the passes and
what they learn of each certificate in :mod:`vault_bridge.agent.passes`; the state directory is
:mod:`vault_bridge.state.store`, its journal :mod:`vault_bridge.state.journal`; signals are
:mod:`vault_bridge.agent.signals`, revocations :mod:`vault_bridge.agent.revocation`, and the CLI's
one-shot pass :mod:`vault_bridge.agent.oneshot`. This module sequences them.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vault_bridge.adapters.ports import VaultAuth
from vault_bridge.agent.ha import Coordinator
from vault_bridge.agent.health import Metrics, Snapshot, login_samples, serving
from vault_bridge.agent.oneshot import result_json
from vault_bridge.agent.passes import AgentRotator, Passes
from vault_bridge.agent.revocation import queue_replaced_logins, revoke_due
from vault_bridge.agent.signals import Signals
from vault_bridge.config.loading import load_config
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.schedule import Backoff, Wake, after_failure, attempt_at, next_wake
from vault_bridge.decisions.token import renew_due_at
from vault_bridge.errors import StateError, VaultBridgeError, VaultUnavailableError
from vault_bridge.models.times import iso, utc_now
from vault_bridge.rotation.app import App, build
from vault_bridge.rotation.followups import FollowUps
from vault_bridge.rotation.results import Outcome
from vault_bridge.state.journal import IntentJournal
from vault_bridge.state.store import LockHeld, StateDir

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# Past the 2/3 point by this much, so that VaultClient (which measures from its own clock
# reading) agrees the token is due; small next to the shortest TTL.
TOKEN_MARGIN = timedelta(milliseconds=50)
MIN_SLEEP = 0.5  # seconds between two steps, at least
LOCK_POLL = timedelta(seconds=5)  # how often a second agent tries the lock
RESULT_TTL = 3600.0  # answers nobody collected are removed after this many seconds


class Agent:
    """The daemon. :meth:`run` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | Path | None = None,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        ha: Coordinator | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = Path(config_path) if config_path else settings.path
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.state_dir = StateDir(settings.agent.state_dir)
        self.signals = Signals(lambda: self.stop_grace)
        # [ha]: the leases, and the state in Vault's KV engine instead of the state directory's files
        self.ha = (
            ha
            if ha is not None or settings.ha is None
            else Coordinator.from_settings(settings, clock=clock)
        )
        self.keeper = IntentJournal(
            self.state_dir,
            settings,
            clock=clock,
            stopping=lambda: self.signals.stopping,
            on_installed=lambda change: self.passes.installed(change),
            store=self.ha.store if self.ha is not None else None,
        )
        self.passes = Passes(settings, self.keeper, clock=clock, rng=self.rng)
        if self.ha is not None:
            self.passes.leads = self.ha.leads
        self.app: App | None = None
        self.state_backoff = Backoff()
        self.token_backoff = Backoff()
        self.token_error: str | None = None
        self.token_checked_at: datetime | None = None
        self._locked: contextlib.ExitStack | None = None
        self._lock_note: str | None = "the state directory is not locked yet"

    # -- durations from the settings ---------------------------------------------------------

    @property
    def resync(self) -> timedelta:
        return self.settings.agent.resync_interval

    @property
    def stop_grace(self) -> timedelta:
        return self.settings.agent.stop_grace

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.signals.handling())
            server = stack.enter_context(serving(self.settings.agent.listen, self.metrics))
            if server is not None and server.address:
                logger.debug("listening on %s", server.address)
            if self.ha is not None:
                stack.callback(self.ha.close)  # after _close: the leases go last
                self.ha.start()
            stack.callback(self._close)
            logger.info(
                "agent started: %d cluster(s), %d certificate(s), state in %s",
                len(self.settings.clusters),
                len(self.settings.specs()),
                self.state_dir.path,
            )
            while not self.signals.stopping:
                self._step()
                self._publish()
                if self.signals.stopping:
                    break
                wake = self._next_wake()
                # The floor keeps a scheduling mistake from ever becoming a busy loop;
                # signals (SIGHUP, SIGUSR1, SIGTERM) still wake it at once.
                timeout = max(MIN_SLEEP, (wake.at - self.clock()).total_seconds())
                logger.debug("sleeping %.1fs until %s (%s)", timeout, iso(wake.at), wake.reason)
                self.signals.sleep(timeout)
        logger.info("agent stopped")
        self.signals.cancel_watchdog()
        return 0

    def _close(self) -> None:
        if self.keeper.state is not None and self.keeper.error is not None:
            with contextlib.suppress(StateError):
                self.keeper.save()
        if self.app is not None:
            self.app.close()
            self.app = None
        if self._locked is not None:
            self.state_dir.clear_pid()
            self._locked.close()
            self._locked = None

    def _step(self) -> None:
        signals = self.signals.take()
        if signal.SIGHUP in signals:
            self._reload()
        if not self._acquire():
            return
        app = self._app()
        now = self.clock()
        passes = self.passes
        if self.ha is not None and self.ha.step(self.keeper):
            passes.pass_now = True  # a cluster taken over: its journal first, then a pass
        if not self.keeper.healthy and self.state_backoff.allows(now):
            self._recover_state(now)
        self._token(app, now)
        self._renew_logins(app, now)
        if self._journal_open() and (passes.replay_backoff.allows(now) or passes.pass_now):
            passes.replay(app)
        for request in self.state_dir.take_requests():
            self._serve(request)
        if passes.due(self.clock()):
            passes.run(app)
            if self.keeper.unresolved():
                passes.replay(app)  # a failed install: resolve it at once
        if self.ha is None:  # with [ha], replaced login certificates expire on their own
            queue_replaced_logins(self.keeper, app.logins.values(), across_restarts=True)
        revoke_due(
            self.keeper,
            app.vault,
            enabled=self.settings.agent.revoke_superseded,
            rng=self.rng,
            blocked_for=self.resync,
            prove=self.ha.prove if self.ha is not None else None,
        )

    # -- state directory ---------------------------------------------------------------------

    def _acquire(self) -> bool:
        """Lock the state directory and load the state (retried with backoff until it works)."""
        if self._locked is not None:
            return True
        now = self.clock()
        if not self.state_backoff.allows(now):
            return False
        stack = contextlib.ExitStack()
        try:
            self.state_dir.ensure()
            stack.enter_context(self.state_dir.locked("agent"))
        except LockHeld as exc:
            stack.close()
            # Another agent on the same directory (a rolling update): take over as soon as
            # it is gone; trying a free lock costs nothing.
            if self._lock_note != str(exc):
                logger.warning("%s; waiting for it to stop", exc)
            self.state_backoff = Backoff(1, now + LOCK_POLL, str(exc))
            self._lock_note = str(exc)
            return False
        except StateError as exc:
            stack.close()
            self.state_backoff = after_failure(
                self.state_backoff, now=now, not_after=None, rng=self.rng, error=str(exc)
            )
            logger.error("%s; retrying at %s", exc, iso(self.state_backoff.next_attempt))
            self._lock_note = str(exc)
            return False
        self._locked = stack
        self._lock_note = None
        try:
            self.state_dir.write_pid()
        except StateError as exc:
            logger.warning("%s: `issue` cannot hand requests to this agent", exc)
        self.state_backoff = Backoff()
        self._recover_state(now)
        return True

    def _recover_state(self, now: datetime) -> None:
        try:
            if self.keeper.state is None:
                self.keeper.load()
                where = self.ha.store.state_path if self.ha else self.state_dir.path
                logger.info("state loaded from %s", where)
            self.keeper.save()  # proves the directory writable before anything is issued
        except StateError as exc:
            self.state_backoff = after_failure(
                self.state_backoff,
                now=now,
                not_after=self.passes.earliest_expiry(),
                rng=self.rng,
                error=str(exc),
            )
            logger.error("%s (retrying at %s)", exc, iso(self.state_backoff.next_attempt))
            return
        self.state_backoff = Backoff()

    # -- the app, configuration reload -------------------------------------------------------

    def _app(self) -> App:
        if self.app is None:
            self.app = build(
                self.settings,
                clock=self.clock,
                hooks=self.keeper,
                # observes the follow-up window into the agent's registry
                followups=FollowUps.from_settings(
                    self.settings, metrics=self.metrics, crdb_locks=self.ha
                ),
                rotator_cls=AgentRotator,
            )
        return self.app

    def _reload(self) -> None:
        if self.config_path is None:
            logger.warning("SIGHUP: no configuration file to reload")
            return
        try:
            new = load_config(self.config_path)
        except VaultBridgeError as exc:
            logger.error(
                "reloading %s failed; keeping the current configuration: %s",
                self.config_path,
                exc,
            )
            return
        old = self.settings.agent
        for setting in ("state_dir", "listen"):
            if getattr(new.agent, setting) != getattr(old, setting):
                logger.warning("[agent] %s changed: this takes effect at the next start", setting)
        new = replace(
            new,
            agent=new.agent.model_copy(update={"state_dir": old.state_dir, "listen": old.listen}),
        )
        if self.app is not None:
            self.app.close()
            self.app = None
        self.settings = new
        self.keeper.settings = new
        self.passes.reload(new)
        if self.ha is not None:
            if new.ha is None or new.ha.model_dump() != self.ha.config.model_dump():
                logger.warning("[ha] changed: this takes effect at the next start")
            self.ha.settings = replace(new, ha=self.ha.config)
        configured = {(s.cluster, s.name.value) for s in new.specs()}
        self.token_backoff = Backoff()
        if self.keeper.state is not None:
            for key in list(self.keeper.state.certificates):
                self.keeper.state.update(key, backoff=Backoff())
        elif self._locked is not None:
            self.state_backoff = Backoff()  # try the state file again now
        logger.info(
            "configuration reloaded from %s: %d cluster(s), %d certificate(s)",
            self.config_path,
            len(new.clusters),
            len(configured),
        )

    # -- Vault token -------------------------------------------------------------------------

    def _token_due(self, vault: VaultAuth, now: datetime) -> datetime:
        if self.token_backoff.failures:
            assert self.token_backoff.next_attempt is not None
            return self.token_backoff.next_attempt
        info = vault.token_info
        if info is None or self.token_checked_at is None:
            return now
        if info.expire_time is None or info.ttl_seconds <= 0:
            return self.token_checked_at + self.resync  # notices a changed token file
        obtained_at = info.expire_time - timedelta(seconds=info.ttl_seconds)
        return renew_due_at(obtained_at, info.ttl_seconds) + TOKEN_MARGIN

    def _token(self, app: App, now: datetime) -> None:
        if now < self._token_due(app.vault, now):
            return
        try:
            app.vault.ensure_token()
        except VaultBridgeError as exc:
            self.token_backoff = after_failure(
                self.token_backoff,
                now=now,
                not_after=app.vault.token_expires_at,
                rng=self.rng,
                error=str(exc),
            )
            level = logging.WARNING if isinstance(exc, VaultUnavailableError) else logging.ERROR
            logger.log(
                level,
                "Vault login or token renewal failed: %s (retrying at %s)",
                exc,
                iso(self.token_backoff.next_attempt),
            )
            self.token_error = str(exc)
            return
        self.token_checked_at = self.clock()
        self.token_backoff = Backoff()
        self.token_error = None

    def _renew_logins(self, app: App, now: datetime) -> None:
        """Renew the login certificates that are due, so a certificate in use never expires
        while the agent sleeps (a request would renew it first anyway)."""
        for login in app.logins.values():
            at = login.next_attempt
            if at is not None and at <= now:
                try:
                    login.current()
                except VaultBridgeError as exc:
                    logger.error("cluster %s: login certificate: %s", login.spec.cluster, exc)

    # -- CLI requests ------------------------------------------------------------------------

    def _serve(self, request: dict[str, Any]) -> None:
        request_id = str(request["id"])
        kind = request.get("kind")
        targets = {(str(c), str(n)) for c, n in request.get("targets") or ()}
        logger.info("request %s from the CLI: %s %s", request_id, kind, sorted(targets) or "")
        app = self._app()
        if kind == "issue":
            result = self.passes.run(app, force=targets, only=targets)
        else:
            configured = {(s.cluster, s.name.value) for s in self.settings.specs()}
            held = self.keeper.blocked_by_journal(self.clock())
            result = self.passes.run(app, only=configured - held)
        if self.keeper.unresolved():
            self.passes.replay(app)
        if self.ha is not None:
            for cluster, name in sorted(targets):
                if not self.ha.leads(cluster):
                    error = "this replica does not lead the cluster: ask its leader (see `status`)"
                    result.outcomes.append(Outcome(cluster, name, "failed", error=error))
        try:
            self.state_dir.write_result(request_id, result_json(result))
        except StateError as exc:
            logger.error("cannot answer request %s: %s", request_id, exc)
        self.state_dir.prune_results(RESULT_TTL)

    # -- waking ------------------------------------------------------------------------------

    def _next_wake(self) -> Wake:
        now = self.clock()
        candidates: list[tuple[datetime | None, str]] = []
        if self._locked is None or not self.keeper.healthy:
            candidates.append((self.state_backoff.next_attempt, "retry the state directory"))
        if self._locked is not None:
            passes = self.passes
            if passes.last_pass_at is not None:
                candidates.append((passes.last_pass_at + self.resync, "resync"))
            candidates.append((passes.pass_backoff.next_attempt, "retry the pass"))
            if self.keeper.healthy:
                replace_foreign = self.settings.agent.replace_foreign
                for cert in passes.tracked(now):
                    at = attempt_at(cert, now, replace_foreign=replace_foreign)
                    candidates.append((at, f"{cert.name} on {cert.cluster}"))
            if self._journal_open():
                candidates.append((passes.replay_backoff.next_attempt or now, "journal replay"))
            candidates.append((self._next_revocation(), "revocation"))
            if self.app is not None:
                candidates.append((self._token_due(self.app.vault, now), "Vault token"))
                for login in self.app.logins.values():
                    candidates.append(
                        (login.next_attempt, f"login certificate of {login.spec.cluster}")
                    )
        if self.ha is not None:
            candidates.append((self.ha.next_step_at(now), "leases"))
        candidates.append((now + self.resync, "resync"))
        return next_wake(now, candidates)

    def _journal_open(self) -> bool:
        state = self.keeper.state
        return state is not None and bool(state.journal or state.pending)

    def _next_revocation(self) -> datetime | None:
        state = self.keeper.state
        if state is None or not self.keeper.healthy or not self.settings.agent.revoke_superseded:
            return None
        times = [
            max(e.revoke_after, e.next_attempt or e.revoke_after)
            for e in state.superseded
            if state.replacement_done(e)  # else the journal replay comes first
        ]
        return min(times) if times else None

    def _publish(self) -> None:
        now = self.clock()
        samples = self.passes.samples(now)
        reasons = []
        if self._lock_note:
            reasons.append(self._lock_note)
        if self.keeper.error:
            reasons.append(f"state: {self.keeper.error}")
        if self.token_error:
            reasons.append(f"Vault: {self.token_error}")
        reasons.extend(self.passes.reasons())
        if self.ha is not None:
            reasons.extend(self.ha.reasons())
        vault = self.app.vault if self.app is not None else None
        ocsp = {}
        if self.app is not None:
            samples = (*samples, *login_samples(self.app.logins.values(), now))
            ocsp = {c: s.cert_status for c, s in self.app.rotator.ocsp.items()}
        self.metrics.publish(
            Snapshot(
                certificates=samples,
                rotations=dict(self.keeper.rotations),
                token_expires_at=vault.token_expires_at if vault else None,
                ready=not reasons,
                reasons=tuple(reasons),
                followups_pending=self.keeper.followups_pending(),
                leaders=self.ha.leaders() if self.ha is not None else {},
                lease_renewal_failures=dict(self.ha.failures) if self.ha is not None else {},
                ocsp=ocsp,
            )
        )


def run_agent(settings: Settings, *, config_path: str | Path | None = None) -> int:
    """`vault-bridge run`: the daemon; returns the exit code."""
    return Agent(settings, config_path=config_path).run()
