"""The long-running agent (`vault-bridge run`) and the locked one-shot pass (`run --once`, `issue`).

The agent sleeps until the earliest deadline (a renewal, a retry, a revocation, the token's
renewal, the periodic resync) and then takes one *step*: token upkeep, the journal replay,
requests from the CLI, a reconcile pass, due revocations. Signals only set flags and wake it:

- SIGHUP: reload the configuration (a bad one is logged and the current one kept);
- SIGUSR1: a CLI request is waiting in the state directory;
- SIGTERM / SIGINT: finish the step in progress (an install is never separated from its
  follow-ups), save the state, exit 0 - or exit 1 if that takes longer than ``stop_grace``.

Decisions are in :mod:`vault_bridge.schedule` and :mod:`vault_bridge.planner`; the state
directory is :mod:`vault_bridge.state`; this module sequences them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from vault_bridge.app import App, build, utc_now
from vault_bridge.config import CertSpec, Settings, load_config
from vault_bridge.durations import parse_duration
from vault_bridge.errors import (
    StateError,
    VaultBridgeError,
    VaultError,
    VaultPermissionError,
    VaultUnavailableError,
)
from vault_bridge.followup import FollowUps, HasWindow
from vault_bridge.health import CertSample, Condition, Metrics, Snapshot, serving
from vault_bridge.models import CertState, IssuedCertificate
from vault_bridge.planner import CertStatus, renewal_time
from vault_bridge.rotation import Change, Outcome, PassResult, Rotator
from vault_bridge.schedule import (
    Backoff,
    Tracked,
    Wake,
    after_failure,
    allowed_now,
    attempt_at,
    is_expiring,
    next_wake,
    revocation_decision,
)
from vault_bridge.state import (
    JournalPendingError,
    Keeper,
    Key,
    LockHeld,
    RunawayGuardError,
    StateDir,
    StoppingError,
    iso,
    key_text,
    log_change,
)
from vault_bridge.vault import VaultClient

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# Past the 2/3 point by this much, so that VaultClient (which measures from its own clock
# reading) agrees the token is due; small next to the shortest TTL.
TOKEN_MARGIN = timedelta(milliseconds=50)
MIN_SLEEP = 0.5  # seconds between two steps, at least
LOCK_POLL = timedelta(seconds=5)  # how often a second agent tries the lock
REQUEST_TIMEOUT = 900.0  # how long `issue` waits for a running agent's answer
RESULT_TTL = 3600.0  # answers nobody collected are removed after this many seconds


_STATE_MESSAGES = {
    "ok": "valid and ours",
    "due": "due for renewal",
    "missing": "missing",
    "foreign": "not issued by our Vault (foreign)",
    "expired": "expired",
}


class AgentRotator(Rotator):
    """The executor, remembering *why* obtaining a certificate failed (the exception itself),
    so the schedule can tell a missing Vault capability from an outage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.obtain_errors: dict[Key, VaultBridgeError] = {}

    def obtain(self, spec: CertSpec) -> IssuedCertificate:
        try:
            return super().obtain(spec)
        except VaultBridgeError as exc:
            self.obtain_errors[(spec.cluster, spec.name.value)] = exc
            raise


# -- the agent -------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """A certificate as the last pass saw it (or as installed since)."""

    state: CertState | None
    serial: str | None
    not_before: datetime | None
    not_after: datetime | None
    renew_at: datetime | None
    answered: bool = True  # its cluster answered on the last pass

    @classmethod
    def of(cls, status: CertStatus) -> View:
        return cls(
            status.state,
            status.serial,
            status.not_before,
            status.not_after,
            status.renew_at if status.state == "ok" else None,
        )


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
    ) -> None:
        self.settings = settings
        self.config_path = Path(config_path) if config_path else settings.path
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.state_dir = StateDir(settings.agent.state_dir)
        self.keeper = Keeper(
            self.state_dir,
            settings,
            clock=clock,
            stopping=lambda: self._stop,
            on_installed=self._installed,
        )
        self.app: App | None = None
        self.views: dict[Key, View] = {}
        self.permission: dict[Key, tuple[datetime, str]] = {}
        self.cluster_backoff: dict[str, Backoff] = {}
        self.cluster_errors: dict[str, str] = {}
        self.pass_backoff = Backoff()
        self.replay_backoff = Backoff()
        self.state_backoff = Backoff()
        self.token_backoff = Backoff()
        self.token_error: str | None = None
        self.token_checked_at: datetime | None = None
        self.last_pass_at: datetime | None = None
        self.pass_now = True
        self._installed_now: set[Key] = set()
        self._locked: contextlib.ExitStack | None = None
        self._lock_note: str | None = "the state directory is not locked yet"
        self._wake = threading.Event()
        self._mutex = threading.Lock()
        self._signals: set[int] = set()
        self._stop = False
        self._watchdog: threading.Timer | None = None

    # -- durations from the settings ---------------------------------------------------------

    @property
    def resync(self) -> timedelta:
        return parse_duration(self.settings.agent.resync_interval)

    @property
    def stop_grace(self) -> timedelta:
        return parse_duration(self.settings.agent.stop_grace)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._signal_handling())
            server = stack.enter_context(serving(self.settings.agent.listen, self.metrics))
            if server is not None and server.address:
                logger.debug("listening on %s", server.address)
            stack.callback(self._close)
            logger.info(
                "agent started: %d cluster(s), %d certificate(s), state in %s",
                len(self.settings.clusters),
                len(self.settings.specs()),
                self.state_dir.path,
            )
            while not self._stop:
                self._step()
                self._publish()
                if self._stop:
                    break
                wake = self._next_wake()
                # The floor keeps a scheduling mistake from ever becoming a busy loop;
                # signals (SIGHUP, SIGUSR1, SIGTERM) still wake it at once.
                timeout = max(MIN_SLEEP, (wake.at - self.clock()).total_seconds())
                logger.debug("sleeping %.1fs until %s (%s)", timeout, iso(wake.at), wake.reason)
                if self._wake.wait(timeout):
                    self._wake.clear()
        logger.info("agent stopped")
        if self._watchdog is not None:
            self._watchdog.cancel()
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
        with self._mutex:
            signals, self._signals = self._signals, set()
        if signal.SIGHUP in signals:
            self._reload()
        if not self._acquire():
            return
        app = self._app()
        now = self.clock()
        if not self.keeper.healthy and self.state_backoff.allows(now):
            self._recover_state(now)
        self._token(app, now)
        if self._journal_open() and (self.replay_backoff.allows(now) or self.pass_now):
            self._replay(app)
        for request in self.state_dir.take_requests():
            self._serve(request)
        if self._pass_due(self.clock()):
            self._pass(app)
            if self.keeper.unresolved():
                self._replay(app)  # a failed install: resolve it at once
        revoke_due(
            self.keeper,
            app.vault,
            enabled=self.settings.agent.revoke_superseded,
            rng=self.rng,
            blocked_for=self.resync,
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
                logger.info("state loaded from %s", self.state_dir.state_path)
            self.keeper.save()  # proves the directory writable before anything is issued
        except StateError as exc:
            self.state_backoff = after_failure(
                self.state_backoff,
                now=now,
                not_after=self._earliest_expiry(),
                rng=self.rng,
                error=str(exc),
            )
            logger.error("%s (retrying at %s)", exc, iso(self.state_backoff.next_attempt))
            return
        self.state_backoff = Backoff()

    def _earliest_expiry(self) -> datetime | None:
        times = [v.not_after for v in self.views.values() if v.not_after]
        return min(times) if times else None

    # -- the app, configuration reload -------------------------------------------------------

    def _app(self) -> App:
        if self.app is None:
            self.app = build(
                self.settings,
                clock=self.clock,
                hooks=self.keeper,
                # observes the follow-up window into the agent's registry (HasWindow declares
                # a settable attribute, which makes mypy compare the types invariantly)
                followups=FollowUps.from_settings(
                    self.settings, metrics=cast(HasWindow, self.metrics)
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
        configured = {(s.cluster, s.name.value) for s in new.specs()}
        self.views = {k: v for k, v in self.views.items() if k in configured}
        self.permission.clear()
        self.cluster_backoff.clear()
        self.cluster_errors.clear()
        self.pass_backoff = self.replay_backoff = self.token_backoff = Backoff()
        if self.keeper.state is not None:
            for key in list(self.keeper.state.certificates):
                self.keeper.state.update(key, backoff=Backoff())
        elif self._locked is not None:
            self.state_backoff = Backoff()  # try the state file again now
        self.pass_now = True
        logger.info(
            "configuration reloaded from %s: %d cluster(s), %d certificate(s)",
            self.config_path,
            len(new.clusters),
            len(configured),
        )

    # -- Vault token -------------------------------------------------------------------------

    def _token_due(self, vault: VaultClient, now: datetime) -> datetime:
        if self.token_backoff.failures:
            assert self.token_backoff.next_attempt is not None
            return self.token_backoff.next_attempt
        info = vault.token_info
        if info is None or self.token_checked_at is None:
            return now
        if info.expire_time is None or info.ttl_seconds <= 0:
            return self.token_checked_at + self.resync  # notices a changed token file
        return info.expire_time - timedelta(seconds=info.ttl_seconds / 3) + TOKEN_MARGIN

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

    # -- passes ------------------------------------------------------------------------------

    def _tracked(self, now: datetime) -> list[Tracked]:
        out = []
        state = self.keeper.state
        held = self.keeper.blocked_by_journal(now)
        for spec in self.settings.specs():
            key = (spec.cluster, spec.name.value)
            view = self.views.get(key)
            backoff = state.record(key).backoff if state else Backoff()
            cluster_backoff = self.cluster_backoff.get(spec.cluster, Backoff())
            answered = view is not None and view.answered
            if not answered and cluster_backoff.failures:
                backoff = cluster_backoff
            blocked = [t for t in (self.keeper.runaway.get(key),) if t]
            if key in self.permission:
                blocked.append(self.permission[key][0])
            if key in held:  # an earlier change is still in the journal: the replay goes first
                blocked.append(self.replay_backoff.next_attempt or now)
            out.append(
                Tracked(
                    cluster=spec.cluster,
                    name=spec.name.value,
                    state=view.state if view and answered else None,
                    renew_at=view.renew_at if view else None,
                    backoff=backoff,
                    blocked_until=max(blocked) if blocked else None,
                )
            )
        return out

    def _pass_due(self, now: datetime) -> bool:
        if not self.pass_backoff.allows(now):
            return False
        if self.pass_now or self.last_pass_at is None:
            return True
        if now >= self.last_pass_at + self.resync:
            return True
        if not self.keeper.healthy:
            return False  # nothing can be issued: only the resync reads the clusters
        replace_foreign = self.settings.agent.replace_foreign
        for cert in self._tracked(now):
            at = attempt_at(cert, now, replace_foreign=replace_foreign)
            if at is not None and at <= now:
                return True
        return False

    def _pass(
        self,
        app: App,
        *,
        force: Iterable[Key] = (),
        only: set[Key] | None = None,
    ) -> PassResult:
        now = self.clock()
        if only is None:
            only = {t.key for t in self._tracked(now) if allowed_now(t, now)}
        for key in [k for k, (until, _) in self.permission.items() if until <= now]:
            del self.permission[key]  # try again: the policy may have been fixed
        rotator = app.rotator
        assert isinstance(rotator, AgentRotator)
        rotator.obtain_errors.clear()
        self.pass_now = False
        try:
            result = rotator.run_once(force=force, only=only)
        except VaultBridgeError as exc:
            # Raised outside the per-certificate handling (a cluster that stopped answering
            # between the read and the install, a state write before an install).
            self.pass_backoff = after_failure(
                self.pass_backoff,
                now=now,
                not_after=self._earliest_expiry(),
                rng=self.rng,
                error=str(exc),
            )
            logger.error(
                "the pass failed: %s (retrying at %s)", exc, iso(self.pass_backoff.next_attempt)
            )
            self.last_pass_at = now
            self._installed_now.clear()
            result = PassResult()
            result.cluster_errors["*"] = str(exc)
            self.cluster_errors = dict(result.cluster_errors)
            return result
        self.pass_backoff = Backoff()
        self.last_pass_at = now
        self._after_pass(result, rotator, attempted=only)
        return result

    def _installed(self, change: Change) -> None:
        spec = self.settings.cluster(change.cluster).spec(change.name)
        info = change.issued.info
        renew = renewal_time(spec, info) if spec else None
        self.views[(change.cluster, change.name)] = View(
            "ok", info.serial, info.not_before, info.not_after, renew
        )
        self._installed_now.add((change.cluster, change.name))
        self.permission.pop((change.cluster, change.name), None)

    def _after_pass(self, result: PassResult, rotator: AgentRotator, attempted: set[Key]) -> None:
        now = self.clock()
        installed_now, self._installed_now = self._installed_now, set()
        self.cluster_errors = dict(result.cluster_errors)
        for status in result.statuses:
            key = (status.cluster, status.name)
            if key in installed_now:
                continue
            new = View.of(status)
            old = self.views.get(key)
            self.views[key] = new
            if old is None or old.state != new.state or old.serial != new.serial:
                level = logging.INFO
                message = _STATE_MESSAGES.get(new.state or "", str(new.state))
                if new.state == "ok":
                    message += f" (renewal at {iso(new.renew_at)})"
                if new.state == "foreign" and not self.settings.agent.replace_foreign:
                    level, message = logging.WARNING, message + " (left in place: replace_foreign)"
                log_change(
                    message,
                    cluster=status.cluster,
                    certificate=status.name,
                    serial=status.serial,
                    not_after=status.not_after,
                    level=level,
                )
        for cluster in self.settings.clusters:
            error = result.cluster_errors.get(cluster.name)
            if error is None:
                self.cluster_backoff.pop(cluster.name, None)
                continue
            keys = [(cluster.name, s.name.value) for s in cluster.certificates]
            for key in keys:
                if key in self.views:
                    self.views[key] = replace(self.views[key], answered=False)
            expiries = [self.views[k].not_after for k in keys if k in self.views]
            earliest = min((t for t in expiries if t), default=None)
            backoff = after_failure(
                self.cluster_backoff.get(cluster.name, Backoff()),
                now=now,
                not_after=earliest,
                rng=self.rng,
                error=error,
            )
            self.cluster_backoff[cluster.name] = backoff
            expiring = any(self._expiring(k, now) for k in keys)
            logger.log(
                logging.ERROR if expiring else logging.WARNING,
                "cluster %s: %s (retrying at %s%s)",
                cluster.name,
                error,
                iso(backoff.next_attempt),
                "; a certificate has less than 10% of its lifetime left" if expiring else "",
                extra={"cluster": cluster.name},
            )
        failed = {(o.cluster, o.name): o for o in result.failed}
        for key, outcome in failed.items():
            self._failed(key, outcome, rotator.obtain_errors.get(key), now)
        # A certificate left due without any outcome (should not happen): back off anyway,
        # so that it can never turn into a busy loop.
        for status in result.statuses:
            key = (status.cluster, status.name)
            if (
                key in attempted
                and key not in failed
                and key not in installed_now
                and status.state not in ("ok",)
                and not (status.state == "foreign" and not self.settings.agent.replace_foreign)
            ):
                self._backoff_cert(key, "no outcome in the last pass", now)

    def _failed(
        self, key: Key, outcome: Outcome, error: VaultBridgeError | None, now: datetime
    ) -> None:
        if isinstance(error, (StoppingError, StateError, RunawayGuardError, JournalPendingError)):
            return  # not the certificate's fault; the guard logged already
        self.keeper.rotations[(*key, "failure")] += 1
        if isinstance(error, VaultPermissionError) and not self._token_was_rejected():
            until = now + self.resync
            self.permission[key] = (until, str(error))
            logger.error(
                "%s on %s: configuration error, not retried before %s (or a reload): %s",
                key[1],
                key[0],
                iso(until),
                error,
                extra={"cluster": key[0], "certificate": key[1]},
            )
            return
        state = self.keeper.state
        if state is not None and key in state.pending:  # installed; the follow-ups failed
            self.replay_backoff = after_failure(
                self.replay_backoff,
                now=now,
                not_after=self._earliest_expiry(),
                rng=self.rng,
                error=outcome.error or "",
            )
            return
        self._backoff_cert(key, outcome.error or "failed", now)

    def _token_was_rejected(self) -> bool:
        """After a 403: was it the token (expired or revoked: a new login fixes it, so the
        certificate is retried with the usual backoff) rather than the policy?"""
        if self.app is None:
            return False
        vault = self.app.vault
        before = vault.token_info.accessor if vault.token_info else None
        try:
            info = vault.ensure_token()  # after a 403 it looks the token up, logs in if needed
        except VaultBridgeError:
            return False
        return info.accessor != before

    def _backoff_cert(self, key: Key, error: str, now: datetime) -> None:
        state = self.keeper.state
        if state is None:
            return
        view = self.views.get(key)
        backoff = after_failure(
            state.record(key).backoff,
            now=now,
            not_after=view.not_after if view else None,
            rng=self.rng,
            error=error,
        )
        state.update(key, backoff=backoff)
        self.keeper.save_quietly()
        expiring = self._expiring(key, now)
        log_change(
            f"attempt {backoff.failures} failed, retrying at {iso(backoff.next_attempt)}"
            + (" (less than 10% of its lifetime left)" if expiring else ""),
            cluster=key[0],
            certificate=key[1],
            serial=view.serial if view else None,
            not_after=view.not_after if view else None,
            level=logging.ERROR if expiring else logging.WARNING,
        )

    def _expiring(self, key: Key, now: datetime) -> bool:
        view = self.views.get(key)
        return view is not None and is_expiring(view.not_before, view.not_after, now)

    def _replay(self, app: App) -> None:
        now = self.clock()
        errors = self.keeper.replay(app.rotator)
        if errors:
            self.replay_backoff = after_failure(
                self.replay_backoff,
                now=now,
                not_after=self._earliest_expiry(),
                rng=self.rng,
                error="; ".join(errors.values()),
            )
            logger.warning(
                "journal: %d entr%s still pending (retrying at %s)",
                len(errors),
                "y" if len(errors) == 1 else "ies",
                iso(self.replay_backoff.next_attempt),
            )
        else:
            self.replay_backoff = Backoff()

    # -- CLI requests ------------------------------------------------------------------------

    def _serve(self, request: dict[str, Any]) -> None:
        request_id = str(request["id"])
        kind = request.get("kind")
        targets = {(str(c), str(n)) for c, n in request.get("targets") or ()}
        logger.info("request %s from the CLI: %s %s", request_id, kind, sorted(targets) or "")
        app = self._app()
        if kind == "issue":
            result = self._pass(app, force=targets, only=targets)
        else:
            configured = {(s.cluster, s.name.value) for s in self.settings.specs()}
            held = self.keeper.blocked_by_journal(self.clock())
            result = self._pass(app, only=configured - held)
        if self.keeper.unresolved():
            self._replay(app)
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
            if self.last_pass_at is not None:
                candidates.append((self.last_pass_at + self.resync, "resync"))
            candidates.append((self.pass_backoff.next_attempt, "retry the pass"))
            if self.keeper.healthy:
                replace_foreign = self.settings.agent.replace_foreign
                for cert in self._tracked(now):
                    at = attempt_at(cert, now, replace_foreign=replace_foreign)
                    candidates.append((at, f"{cert.name} on {cert.cluster}"))
            if self._journal_open():
                candidates.append((self.replay_backoff.next_attempt or now, "journal replay"))
            candidates.append((self._next_revocation(), "revocation"))
            if self.app is not None:
                candidates.append((self._token_due(self.app.vault, now), "Vault token"))
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
        samples = []
        for spec in self.settings.specs():
            key = (spec.cluster, spec.name.value)
            view = self.views.get(key)
            condition: Condition = "Unknown"
            if view is not None and view.answered and view.state is not None:
                condition = "True" if view.state in ("ok", "due") else "False"
            samples.append(
                CertSample(
                    cluster=spec.cluster,
                    name=spec.name.value,
                    not_after=view.not_after if view else None,
                    renew_at=self._renew_at(key, view, now),
                    condition=condition,
                    expiring=self._expiring(key, now),
                )
            )
        reasons = []
        if self._lock_note:
            reasons.append(self._lock_note)
        if self.keeper.error:
            reasons.append(f"state: {self.keeper.error}")
        if self.token_error:
            reasons.append(f"Vault: {self.token_error}")
        if self.last_pass_at is None:
            reasons.append("no pass yet")
        for cluster, error in sorted(self.cluster_errors.items()):
            reasons.append(f"cluster {cluster}: {error}" if cluster != "*" else error)
        for key, (_, error) in sorted(self.permission.items()):
            reasons.append(f"{key_text(key)}: {error}")
        vault = self.app.vault if self.app is not None else None
        self.metrics.publish(
            Snapshot(
                certificates=tuple(samples),
                rotations=dict(self.keeper.rotations),
                token_expires_at=vault.token_expires_at if vault else None,
                ready=not reasons,
                reasons=tuple(reasons),
            )
        )

    def _renew_at(self, key: Key, view: View | None, now: datetime) -> datetime | None:
        if view is None:
            return None
        if view.state == "ok":
            return view.renew_at
        state = self.keeper.state
        backoff = state.record(key).backoff if state else Backoff()
        return backoff.next_attempt or now

    # -- signals -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signal_handling(self) -> Iterator[None]:
        """Signal handlers only let the C handler write the signal number to a socket; a
        thread reads it, sets the flags and wakes the loop (no lock is taken in a handler)."""
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        watched = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, _ignore) for sig in watched}
        old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        thread = threading.Thread(
            target=self._read_signals, args=(reader,), name="vault-bridge-signals", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            writer.close()
            thread.join(2)
            reader.close()

    def _read_signals(self, reader: socket.socket) -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        with self._mutex:
            self._signals.add(signum)
        if signum in (signal.SIGTERM, signal.SIGINT) and not self._stop:
            logger.info(
                "received %s: finishing the step in progress, then stopping",
                signal.Signals(signum).name,
            )
            self._stop = True
            grace = self.stop_grace.total_seconds()
            self._watchdog = threading.Timer(grace, self._overdue, args=(grace,))
            self._watchdog.daemon = True
            self._watchdog.start()
        elif signum == signal.SIGHUP:
            logger.info("received SIGHUP: reloading the configuration")
        self._wake.set()

    def _overdue(self, grace: float) -> None:
        logger.error(
            "the step in progress did not finish within stop_grace (%ss); exiting now: the "
            "journal resumes it at the next start",
            grace,
        )
        logging.shutdown()
        os._exit(1)


def revoke_due(
    keeper: Keeper,
    vault: VaultClient,
    *,
    enabled: bool,
    rng: random.Random,
    blocked_for: timedelta,
) -> None:
    """Revoke the superseded certificates whose grace period is over (``POST <mount>/revoke``
    by serial, by PEM for a role that keeps no copy); drop the expired ones."""
    state = keeper.state
    if state is None or not state.superseded or not keeper.healthy:
        return
    changed = False
    for entry in list(state.superseded):
        now = keeper.clock()
        decision = revocation_decision(
            not_after=entry.not_after,
            revoke_after=entry.revoke_after,
            replacement_done=state.replacement_done(entry),
            backoff=entry.backoff,
            now=now,
        )
        if decision == "drop":
            state.superseded.remove(entry)
            changed = True
            logger.debug("superseded %s expired: nothing to revoke", entry.serial)
            continue
        if decision == "wait" or not enabled:
            continue
        try:
            vault.ensure_token()
            try:
                vault.revoke(entry.mount, serial=entry.serial)
            except VaultError as exc:
                if exc.status not in (400, 404) or not entry.pem:
                    raise
                vault.revoke(entry.mount, certificate=entry.pem)  # role with no_store
        except VaultPermissionError as exc:
            logger.error(
                "cannot revoke %s of %s on %s: %s (configuration error; retried at the "
                "next resync or reload)",
                entry.serial,
                entry.name,
                entry.cluster,
                exc,
            )
            retry = replace(entry, next_attempt=now + blocked_for)
            state.superseded[state.superseded.index(entry)] = retry
        except VaultError as exc:
            if exc.status in (400, 404):
                logger.warning("%s cannot be revoked, dropped: %s", entry.serial, exc)
                state.superseded.remove(entry)
            else:
                backoff = after_failure(
                    entry.backoff, now=now, not_after=entry.not_after, rng=rng, error=str(exc)
                )
                logger.warning(
                    "revoking %s failed (%s); retrying at %s",
                    entry.serial,
                    exc,
                    iso(backoff.next_attempt),
                )
                retry = replace(entry, failures=backoff.failures, next_attempt=backoff.next_attempt)
                state.superseded[state.superseded.index(entry)] = retry
        else:
            state.superseded.remove(entry)
            log_change(
                f"revoked the {entry.reason} certificate",
                cluster=entry.cluster,
                certificate=entry.name,
                serial=entry.serial,
                not_after=entry.not_after,
            )
        changed = True
    if changed:
        keeper.save_quietly()


def _ignore(signum: int, frame: object) -> None:
    return None


def run_agent(settings: Settings, *, config_path: str | Path | None = None) -> int:
    """`vault-bridge run`: the daemon; returns the exit code."""
    return Agent(settings, config_path=config_path).run()


# -- the one-shot pass of the CLI (`run --once`, `issue`) ------------------------------------


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
                "not_after": iso(o.not_after) if o.not_after else None,
                "error": o.error,
                "reason": o.reason,
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
                not_after=datetime.fromisoformat(not_after) if not_after else None,
                error=item.get("error"),
                reason=str(item.get("reason") or ""),
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
) -> PassResult:
    """One pass under the state directory's lock (`run --once`, `issue`).

    When a running agent holds the lock, the request is handed to it through the state
    directory (``requests/``, then SIGUSR1) and its answer awaited; another one-shot pass
    holding it is waited for. Raises :class:`StateError` when neither works out.
    """
    forced = set(force)
    state_dir = StateDir(settings.agent.state_dir)
    state_dir.ensure()
    deadline = time.monotonic() + lock_wait
    while True:
        try:
            with state_dir.locked("cli"):
                return _rotate_locked(settings, state_dir, forced, only, clock)
        except LockHeld as exc:
            if exc.agent_pid is not None:
                request = {
                    "kind": "issue" if forced else "run",
                    "targets": sorted(forced),
                }
                return _hand_over(state_dir, exc.agent_pid, request, answer_wait)
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def _rotate_locked(
    settings: Settings, state_dir: StateDir, force: set[Key], only: set[Key] | None, clock: Clock
) -> PassResult:
    keeper = Keeper(state_dir, settings, clock=clock)
    keeper.load()
    with build(settings, clock=clock, hooks=keeper) as app:
        pending = keeper.replay(app.rotator)  # what a killed agent or pass left: first
        if pending:
            logger.warning("journal entries still pending: %s", ", ".join(map(key_text, pending)))
        held = keeper.blocked_by_journal(clock())
        if only is None and held:
            only = {(s.cluster, s.name.value) for s in settings.specs()} - held
        result = app.rotator.run_once(force=force, only=only)
        keeper.replay(app.rotator)
        revoke_due(
            keeper,
            app.vault,
            enabled=settings.agent.revoke_superseded,
            rng=random.Random(),
            blocked_for=parse_duration(settings.agent.resync_interval),
        )
    return result


def _hand_over(
    state_dir: StateDir, pid: int, request: dict[str, Any], timeout: float
) -> PassResult:
    request_id = state_dir.submit(request)
    logger.info("the agent (pid %s) runs: handing it the request and waiting for its answer", pid)
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        state_dir.withdraw(request_id)
        raise StateError(f"the agent (pid {pid}) is gone; try again") from None
    deadline = time.monotonic() + timeout
    while True:
        answer = state_dir.read_result(request_id)
        if answer is not None:
            return result_from_json(answer)
        alive = state_dir.agent_pid() == pid
        if not alive or time.monotonic() >= deadline:
            answer = state_dir.read_result(request_id)
            if answer is not None:
                return result_from_json(answer)
            withdrawn = state_dir.withdraw(request_id)
            what = "stopped before answering" if not alive else f"did not answer in {timeout:.0f}s"
            note = "" if withdrawn else " (it may still carry the request out)"
            raise StateError(f"the agent (pid {pid}) {what}{note}")
        time.sleep(0.1)
