"""The agent's reconcile passes, and what it remembers of each certificate between them.

:class:`Passes` keeps the last view of every certificate, the backoffs (per certificate, per
cluster, of the pass and of the journal replay) and the certificates blocked by a missing Vault
capability; it tells when a pass is due, runs it, and books its result: state changes logged,
failures backed off. What is due is decided by :mod:`vault_bridge.decisions.schedule`; the certificates'
lines of ``/metrics`` and the pass's reasons for ``/readyz`` come from here too.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from vault_bridge.adapters.ports import VaultAuth
from vault_bridge.agent.health import CertSample, Condition
from vault_bridge.config.settings import CertSpec, Settings
from vault_bridge.decisions.renewal import CertStatus, renewal_time, windowed
from vault_bridge.decisions.schedule import (
    Backoff,
    Tracked,
    after_failure,
    allowed_now,
    attempt_at,
    is_expiring,
)
from vault_bridge.errors import StateError, VaultBridgeError, VaultPermissionError
from vault_bridge.models.certificates import CertState, IssuedCertificate
from vault_bridge.models.times import iso
from vault_bridge.rotation.app import AppPorts
from vault_bridge.rotation.executor import Rotator
from vault_bridge.rotation.results import Change, Outcome, PassResult
from vault_bridge.state.journal import (
    Clock,
    IntentJournal,
    JournalPendingError,
    RunawayGuardError,
    StoppingError,
)
from vault_bridge.state.records import Key, key_text, log_change

logger = logging.getLogger(__name__)


def _everything(cluster: str) -> bool:
    return True


_STATE_MESSAGES = {
    "ok": "valid and ours",
    "due": "due for renewal",
    "missing": "missing",
    "foreign": "not issued by our Vault (foreign)",
    "expired": "expired",
    "revoked": "revoked in Vault",
}


class AgentRotator(Rotator):
    """The executor, remembering *why* obtaining a certificate failed (the exception itself),
    so the schedule can tell a missing Vault capability from an outage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.obtain_errors: dict[Key, VaultBridgeError] = {}
        self.leads: Callable[[str], bool] = _everything

    def run_once(
        self,
        *,
        force: Iterable[tuple[str, str]] = (),
        only: set[tuple[str, str]] | None = None,
    ) -> PassResult:
        """The pass over the clusters this replica leads (all of them without ``[ha]``)."""
        full = self.settings
        led = tuple(c for c in full.clusters if self.leads(c.name))
        if len(led) == len(full.clusters):
            return super().run_once(force=force, only=only)
        self.settings = replace(full, clusters=led)
        try:
            return super().run_once(force=force, only=only)
        finally:
            self.settings = full

    def obtain(self, spec: CertSpec, *, explicit: bool = False) -> IssuedCertificate:
        try:
            return super().obtain(spec, explicit=explicit)
        except VaultBridgeError as exc:
            self.obtain_errors[(spec.cluster, spec.name.value)] = exc
            raise


@dataclass(frozen=True)
class View:
    """A certificate as the last pass saw it (or as installed since)."""

    state: CertState | None
    serial: str | None
    not_before: datetime | None
    not_after: datetime | None
    renew_at: datetime | None
    answered: bool = True  # its cluster answered on the last pass
    overdue_at: datetime | None = None
    issuer_expiring: bool = False
    issuer_outdated: bool = False
    window: str | None = None

    @classmethod
    def of(cls, status: CertStatus) -> View:
        return cls(
            status.state,
            status.serial,
            status.not_before,
            status.not_after,
            # a due certificate keeps the time it goes: its maintenance window's opening
            status.renew_at if status.state in ("ok", "due") else None,
            overdue_at=status.overdue_at,
            issuer_expiring=status.issuer_expiring,
            issuer_outdated=status.issuer_outdated,
            window=status.window,
        )

    def overdue(self, now: datetime) -> bool:
        return self.overdue_at is not None and now >= self.overdue_at


def watched(settings: Settings) -> list[Key]:
    """Every certificate a pass keeps: the cluster certificates, then the databases' own."""
    keys = [(s.cluster, s.name.value) for s in settings.specs()]
    keys += [(c.name, d.label) for c in settings.clusters for d in c.databases]
    return keys


class Passes:
    """The passes of the agent and what they taught it about each certificate."""

    def __init__(
        self, settings: Settings, keeper: IntentJournal, *, clock: Clock, rng: random.Random
    ) -> None:
        self.settings = settings
        self.keeper = keeper
        self.clock = clock
        self.rng = rng
        self.views: dict[Key, View] = {}
        self.permission: dict[Key, tuple[datetime, str]] = {}
        self.cluster_backoff: dict[str, Backoff] = {}
        self.cluster_errors: dict[str, str] = {}
        self.pass_backoff = Backoff()
        self.replay_backoff = Backoff()
        self.last_pass_at: datetime | None = None
        self.pass_now = True
        self._installed_now: set[Key] = set()
        self.window_overrides: Counter[Key] = Counter()
        # With [ha]: the clusters this replica leads right now; the others are left alone.
        self.leads: Callable[[str], bool] = _everything

    @property
    def resync(self) -> timedelta:
        return self.settings.agent.resync_interval

    def reload(self, settings: Settings) -> None:
        """A new configuration: forget what no longer applies, pass at once."""
        self.settings = settings
        configured = set(watched(settings))
        self.views = {k: v for k, v in self.views.items() if k in configured}
        self.permission.clear()
        self.cluster_backoff.clear()
        self.cluster_errors.clear()
        self.pass_backoff = self.replay_backoff = Backoff()
        self.pass_now = True

    def earliest_expiry(self) -> datetime | None:
        times = [v.not_after for v in self.views.values() if v.not_after]
        return min(times) if times else None

    def tracked(self, now: datetime) -> list[Tracked]:
        out = []
        state = self.keeper.state
        held = self.keeper.blocked_by_journal(now)
        for key in watched(self.settings):
            if not self.leads(key[0]):
                continue
            view = self.views.get(key)
            backoff = state.record(key).backoff if state else Backoff()
            cluster_backoff = self.cluster_backoff.get(key[0], Backoff())
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
                    cluster=key[0],
                    name=key[1],
                    state=view.state if view and answered else None,
                    renew_at=view.renew_at if view else None,
                    backoff=backoff,
                    blocked_until=max(blocked) if blocked else None,
                )
            )
        return out

    def due(self, now: datetime) -> bool:
        if not self.pass_backoff.allows(now):
            return False
        if self.pass_now or self.last_pass_at is None:
            return True
        if now >= self.last_pass_at + self.resync:
            return True
        if not self.keeper.healthy:
            return False  # nothing can be issued: only the resync reads the clusters
        replace_foreign = self.settings.agent.replace_foreign
        for cert in self.tracked(now):
            at = attempt_at(cert, now, replace_foreign=replace_foreign)
            if at is not None and at <= now:
                return True
        return False

    def run(
        self,
        app: AppPorts,
        *,
        force: Iterable[Key] = (),
        only: set[Key] | None = None,
    ) -> PassResult:
        now = self.clock()
        if only is None:
            only = {t.key for t in self.tracked(now) if allowed_now(t, now)}
        for key in [k for k, (until, _) in self.permission.items() if until <= now]:
            del self.permission[key]  # try again: the policy may have been fixed
        only = {k for k in only if self.leads(k[0])}
        force = [k for k in force if self.leads(k[0])]
        rotator = app.rotator
        assert isinstance(rotator, AgentRotator)
        rotator.obtain_errors.clear()
        rotator.leads = self.leads
        self.pass_now = False
        try:
            result = rotator.run_once(force=force, only=only)
        except VaultBridgeError as exc:
            # Raised outside the per-certificate handling (a cluster that stopped answering
            # between the read and the install, a state write before an install).
            self.pass_backoff = after_failure(
                self.pass_backoff,
                now=now,
                not_after=self.earliest_expiry(),
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
        self._after_pass(result, rotator, attempted=only, vault=app.vault)
        return result

    def installed(self, change: Change) -> None:
        spec = self.settings.cluster(change.cluster).spec(change.name)
        info = change.issued.info
        if spec is None:
            view = View("ok", info.serial, info.not_before, info.not_after, None)
        else:
            planned = windowed(spec, info, renewal_time(spec, info), self.clock())
            slack = (info.not_after - info.not_before) * spec.overdue_after
            view = View(
                "ok",
                info.serial,
                info.not_before,
                info.not_after,
                planned.at,
                overdue_at=planned.at + slack,
                window=planned.window,
            )
        self.views[(change.cluster, change.name)] = view
        self._installed_now.add((change.cluster, change.name))
        self.permission.pop((change.cluster, change.name), None)

    def _after_pass(
        self, result: PassResult, rotator: AgentRotator, attempted: set[Key], vault: VaultAuth
    ) -> None:
        now = self.clock()
        installed_now, self._installed_now = self._installed_now, set()
        self.cluster_errors = dict(result.cluster_errors)
        self.window_overrides.update(result.window_overrides)
        for status in result.statuses:
            if (status.cluster, status.name) not in installed_now:
                self._book_view(status, now)
        for cluster in self.settings.clusters:
            self._book_cluster(cluster.name, result.cluster_errors.get(cluster.name), now)
        failed = {(o.cluster, o.name): o for o in result.failed}
        for key, outcome in failed.items():
            self._failed(key, outcome, rotator.obtain_errors.get(key), now, vault)
        self._escalate_overdue(result, attempted, installed_now, failed, now)
        # A certificate left due without any outcome (should not happen): back off anyway,
        # so that it can never turn into a busy loop.
        for status in result.statuses:
            key = (status.cluster, status.name)
            if (
                key in attempted
                and key not in failed
                and key not in installed_now
                and self._still_due(status, now)
            ):
                self._backoff_cert(key, "no outcome in the last pass", now)

    def _still_due(self, status: CertStatus, now: datetime) -> bool:
        """Whether the pass should have done something about ``status`` (not a due one
        waiting for its maintenance window)."""
        if status.state == "ok" or status.held(now):
            return False
        return not (status.state == "foreign" and not self.settings.agent.replace_foreign)

    def _book_view(self, status: CertStatus, now: datetime) -> None:
        """Remember what the pass saw of a certificate; one line when its state changed."""
        key = (status.cluster, status.name)
        new = View.of(status)
        old = self.views.get(key)
        self.views[key] = new
        if old is not None and old.state == new.state and old.serial == new.serial:
            return
        level = logging.INFO
        message = _STATE_MESSAGES.get(new.state or "", str(new.state))
        if new.state == "ok":
            message += f" (renewal at {iso(new.renew_at)})"
        if status.held(now):
            message += f" (waits for maintenance window {status.window!r} at {iso(new.renew_at)})"
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

    def _book_cluster(self, name: str, error: str | None, now: datetime) -> None:
        """A cluster that answered clears its backoff; one that did not backs off, and its
        certificates are marked as not answered."""
        if error is None:
            self.cluster_backoff.pop(name, None)
            return
        keys = [k for k in watched(self.settings) if k[0] == name]
        for key in keys:
            if key in self.views:
                self.views[key] = replace(self.views[key], answered=False)
        expiries = [self.views[k].not_after for k in keys if k in self.views]
        earliest = min((t for t in expiries if t), default=None)
        backoff = after_failure(
            self.cluster_backoff.get(name, Backoff()),
            now=now,
            not_after=earliest,
            rng=self.rng,
            error=error,
        )
        self.cluster_backoff[name] = backoff
        expiring = any(self.expiring(k, now) for k in keys)
        logger.log(
            logging.ERROR if expiring else logging.WARNING,
            "cluster %s: %s (retrying at %s%s)",
            name,
            error,
            iso(backoff.next_attempt),
            "; a certificate has less than 10% of its lifetime left" if expiring else "",
            extra={"cluster": name},
        )

    def _escalate_overdue(
        self,
        result: PassResult,
        attempted: set[Key],
        installed_now: set[Key],
        failed: dict[Key, Outcome],
        now: datetime,
    ) -> None:
        """An ERROR line for every overdue certificate this pass tried and did not renew."""
        for status in result.statuses:
            key = (status.cluster, status.name)
            if key not in attempted or key in installed_now or not status.overdue(now):
                continue
            outcome = failed.get(key)
            why = outcome.error if outcome and outcome.error else "not renewed"
            logger.error(
                "%s on %s is overdue: its renewal time %s has passed and it is still not "
                "renewed (not_after %s): %s",
                status.name,
                status.cluster,
                iso(status.renew_at if status.state == "due" else None) or "-",
                iso(status.not_after),
                why,
                extra={"cluster": status.cluster, "certificate": status.name},
            )

    def _failed(
        self,
        key: Key,
        outcome: Outcome,
        error: VaultBridgeError | None,
        now: datetime,
        vault: VaultAuth,
    ) -> None:
        if isinstance(error, (StoppingError, StateError, RunawayGuardError, JournalPendingError)):
            return  # not the certificate's fault; the guard logged already
        self.keeper.rotations[(*key, "failure")] += 1
        if isinstance(error, VaultPermissionError) and not self._token_was_rejected(vault):
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
                not_after=self.earliest_expiry(),
                rng=self.rng,
                error=outcome.error or "",
            )
            return
        self._backoff_cert(key, outcome.error or "failed", now)

    def _token_was_rejected(self, vault: VaultAuth) -> bool:
        """After a 403: was it the token (expired or revoked: a new login fixes it, so the
        certificate is retried with the usual backoff) rather than the policy?"""
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
        expiring = self.expiring(key, now)
        log_change(
            f"attempt {backoff.failures} failed, retrying at {iso(backoff.next_attempt)}"
            + (" (less than 10% of its lifetime left)" if expiring else ""),
            cluster=key[0],
            certificate=key[1],
            serial=view.serial if view else None,
            not_after=view.not_after if view else None,
            level=logging.ERROR if expiring else logging.WARNING,
        )

    def expiring(self, key: Key, now: datetime) -> bool:
        view = self.views.get(key)
        return view is not None and is_expiring(view.not_before, view.not_after, now)

    def replay(self, app: AppPorts) -> None:
        now = self.clock()
        errors = self.keeper.replay(app.rotator)
        if errors:
            self.replay_backoff = after_failure(
                self.replay_backoff,
                now=now,
                not_after=self.earliest_expiry(),
                rng=self.rng,
                error="; ".join(errors.values()),
            )
            # Follow-ups that keep failing hold back the next renewal of their certificate
            # (until it is expiring): an ERROR, and vault_bridge_followups_pending_since_...
            state = self.keeper.state
            followups = state is not None and any(k in state.pending for k in errors)
            logger.log(
                logging.ERROR if followups else logging.WARNING,
                "journal: %d entr%s still pending (retrying at %s)%s",
                len(errors),
                "y" if len(errors) == 1 else "ies",
                iso(self.replay_backoff.next_attempt),
                "; the certificate is renewed anyway once it is expiring" if followups else "",
            )
        else:
            self.replay_backoff = Backoff()

    # -- health ------------------------------------------------------------------------------

    def samples(self, now: datetime) -> tuple[CertSample, ...]:
        """Each configured certificate as ``/metrics`` shows it."""
        samples = []
        for key in watched(self.settings):
            if not self.leads(key[0]):
                continue
            view = self.views.get(key)
            condition: Condition = "Unknown"
            if view is not None and view.answered and view.state is not None:
                condition = "True" if view.state in ("ok", "due") else "False"
            samples.append(
                CertSample(
                    cluster=key[0],
                    name=key[1],
                    not_after=view.not_after if view else None,
                    renew_at=self._renew_at(key, view, now),
                    condition=condition,
                    expiring=self.expiring(key, now),
                    overdue=view is not None and view.overdue(now),
                    issuer_expiring=view is not None and view.issuer_expiring,
                    issuer_outdated=view is not None and view.issuer_outdated,
                    window_overrides=self.window_overrides[key],
                )
            )
        return tuple(samples)

    def reasons(self) -> list[str]:
        """Why the agent is not ready, as far as the passes know."""
        reasons = []
        if self.last_pass_at is None:
            reasons.append("no pass yet")
        for cluster, error in sorted(self.cluster_errors.items()):
            reasons.append(f"cluster {cluster}: {error}" if cluster != "*" else error)
        for key, (_, error) in sorted(self.permission.items()):
            reasons.append(f"{key_text(key)}: {error}")
        return reasons

    def _renew_at(self, key: Key, view: View | None, now: datetime) -> datetime | None:
        if view is None:
            return None
        if view.state in ("ok", "due") and view.renew_at is not None and view.renew_at > now:
            return view.renew_at  # ours and valid, or due and waiting for its window
        if view.state == "ok":
            return view.renew_at
        state = self.keeper.state
        backoff = state.record(key).backoff if state else Backoff()
        return backoff.next_attempt or now
