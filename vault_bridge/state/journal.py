"""The intent journal: :class:`IntentJournal` records every step of a rotation in the state
directory.

It is the :class:`vault_bridge.rotation.hooks.RotationHooks` of the agent and of the CLI's
one-shot pass: the runaway guard before Vault is asked, then the journal entry (an
:class:`vault_bridge.state.records.Intent`) moves ``issued`` -> ``installing`` -> ``followups``
-> cleared, each step saved before the next starts. :meth:`IntentJournal.replay` resolves what
a killed agent or pass left behind.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from vault_bridge.config.settings import CertSpec, Settings
from vault_bridge.decisions.schedule import Backoff, is_expiring, runaway_until
from vault_bridge.errors import DeferredError, StateError, VaultBridgeError
from vault_bridge.models.certificates import CertName, IssuedCertificate
from vault_bridge.models.times import iso
from vault_bridge.rotation.executor import Rotator
from vault_bridge.rotation.results import Change
from vault_bridge.state.records import Intent, Key, State, key_text, log_change
from vault_bridge.state.store import StateDir

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

DATABASE_PREFIX = "bdb:"  # a database's own certificate: bdb:<database>


class StateStore(Protocol):
    """Where the state lives: the state directory's files, one per cluster
    (:class:`~vault_bridge.state.store.StateDir`) or, with ``[ha]``, Vault's KV engine
    (:class:`~vault_bridge.state.kv_store.KvStateStore`)."""

    def load(self) -> State: ...

    def save(self, state: State, clusters: Iterable[str] | None = None) -> None:
        """Write what changed: of ``clusters`` only (a step of a rotation touches one), or
        of every cluster with None."""
        ...


class RunawayGuardError(VaultBridgeError):
    """``max_issues_per_hour`` certificates were issued for one cluster/name: stop issuing it."""


class StoppingError(DeferredError):
    """The agent is stopping: no new certificate is requested."""


class JournalPendingError(DeferredError):
    """The journal still holds an earlier change of this certificate: it goes first."""


class IntentJournal:
    """Records every step of a rotation in the state directory (the agent and the CLI).

    Before Vault is asked: the runaway guard, and the issue time is saved (nothing is issued
    that cannot be recorded). After: the journal moves ``issued`` -> ``installing`` ->
    ``followups`` -> cleared, each saved before the next step starts.
    """

    def __init__(
        self,
        state_dir: StateDir,
        settings: Settings,
        *,
        clock: Clock,
        stopping: Callable[[], bool] = lambda: False,
        on_installed: Callable[[Change], None] | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.store: StateStore = store if store is not None else state_dir
        self.settings = settings
        self.clock = clock
        self._stopping = stopping
        self._on_installed = on_installed
        self.state: State | None = None
        self.error: str | None = None  # why the state cannot be read or written
        self.rotations: Counter[tuple[str, str, str]] = Counter()
        self.runaway: dict[Key, datetime] = {}

    @property
    def healthy(self) -> bool:
        return self.state is not None and self.error is None

    def load(self) -> State:
        try:
            self.state = self.store.load()
        except StateError as exc:
            self.error = str(exc)
            raise
        self.error = None
        return self.state

    def save(self, clusters: Iterable[str] | None = None) -> None:
        """Write the state: the files of ``clusters`` (the one a step touched), or with None
        everything that changed."""
        if self.state is None:
            raise StateError(self.error or "the state is not loaded")
        try:
            self.store.save(self.state, clusters)
        except StateError as exc:
            if self.error != str(exc):
                logger.error("%s", exc)
            self.error = str(exc)
            raise
        if self.error is not None:
            logger.info("the state directory is writable again")
        self.error = None

    def save_quietly(self, clusters: Iterable[str] | None = None) -> None:
        """Save after a step that has happened already (an install): a failure is logged and
        the agent stops issuing, but the step goes on."""
        with contextlib.suppress(StateError):
            self.save(clusters)

    def _grace(self) -> timedelta:
        return self.settings.agent.revoke_grace

    def _mount(self, cluster: str, name: str) -> str:
        settings = self.settings.cluster(cluster)
        spec = settings.spec(name)
        if spec is None:  # a database's own certificate (bdb:<database>)
            spec = next((d.cert for d in settings.databases if d.label == name), None)
        return spec.pki_mount if spec else ""

    # -- RotationHooks -----------------------------------------------------------------------

    def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
        """``explicit``: the operator's ``issue`` command. It is always carried out, past the
        runaway guard too (a WARNING then); it counts towards the guard all the same."""
        key = (cluster, name) = (spec.cluster, spec.key_name)
        if self._stopping():
            raise StoppingError(
                "stopping: no new certificate is requested", cluster=cluster, certificate=name
            )
        if self.state is None or self.error is not None:
            reason = self.error or "the state is not loaded"
            raise StateError(f"not issuing: {reason}", cluster=cluster, certificate=name)
        now = self.clock()
        self._journal_guard(key, now)
        limit = self.settings.agent.max_issues_per_hour
        until = runaway_until(self.state.record(key).issued_at, now, limit)
        if until is not None and explicit:
            logger.warning(
                "%s on %s: explicit issue past the runaway guard (%d certificates issued in the "
                "last hour, max_issues_per_hour): carried out",
                name,
                cluster,
                limit,
                extra={"cluster": cluster, "certificate": name},
            )
        elif until is not None:
            self.runaway[key] = until
            self.rotations[(*key, "blocked")] += 1
            message = (
                f"runaway guard: {limit} certificates issued in the last hour "
                f"(max_issues_per_hour); not issuing again before {iso(until)}"
            )
            logger.error(
                "%s on %s: %s",
                name,
                cluster,
                message,
                extra={"cluster": cluster, "certificate": name},
            )
            raise RunawayGuardError(message, cluster=cluster, certificate=name)
        self.runaway.pop(key, None)
        self.state.note_issue(key, now)
        try:
            self.save([cluster])
        except StateError:
            self.state.forget_issue(key, now)
            raise

    def _journal_guard(self, key: Key, now: datetime) -> None:
        """No new certificate while the last install is unresolved, nor while the follow-ups
        of the last change are pending - unless that certificate is expiring."""
        assert self.state is not None
        if key in self.state.journal:
            raise JournalPendingError(
                "the outcome of the last install is not known yet (journal replay first)",
                cluster=key[0],
                certificate=key[1],
            )
        pending = self.state.pending.get(key)
        if pending is not None:
            if not is_expiring(pending.info.not_before, pending.not_after, now):
                raise JournalPendingError(
                    "the follow-ups of the last change are still pending (retried from the "
                    "journal); not rotating again before they succeed",
                    cluster=key[0],
                    certificate=key[1],
                )
            logger.warning(
                "%s: follow-ups still pending, but the certificate is expiring: rotating",
                key_text(key),
            )

    def followups_pending(self) -> dict[Key, datetime]:
        """Since when each change with pending follow-ups has waited (for the metric)."""
        if self.state is None:
            return {}
        return {
            key: intent.started_at or self.clock() for key, intent in self.state.pending.items()
        }

    def blocked_by_journal(self, now: datetime) -> set[Key]:
        """Certificates a pass must leave alone until the journal replay succeeded."""
        if self.state is None:
            return set()
        return set(self.state.journal) | {
            key
            for key, intent in self.state.pending.items()
            if not is_expiring(intent.info.not_before, intent.not_after, now)
        }

    def issued(self, spec: CertSpec, issued: IssuedCertificate) -> None:
        assert self.state is not None
        self.state.journal_issued(
            Intent(
                cluster=spec.cluster,
                name=spec.key_name,
                phase="issued",
                serial=issued.serial,
                not_after=issued.not_after,
                mount=spec.pki_mount,
                new_pem=issued.chain_pem,
                old_pem=None,
                lease_id=issued.lease_id,
                started_at=self.clock(),
            )
        )
        self.save([spec.cluster])

    def before_install(self, cluster: str, changes: Sequence[Change]) -> None:
        assert self.state is not None
        for change in changes:
            self.state.journal_installing(
                Intent(
                    cluster=cluster,
                    name=change.name,
                    phase="installing",
                    serial=change.issued.serial,
                    not_after=change.issued.not_after,
                    mount=self._mount(cluster, change.name),
                    new_pem=change.issued.chain_pem,
                    old_pem=change.previous.pem if change.previous else None,
                    lease_id=change.issued.lease_id,
                    started_at=self.clock(),
                )
            )
        self.save([cluster])

    def installed(self, changes: Sequence[Change]) -> None:
        assert self.state is not None
        revoke_after = self.clock() + self._grace()
        for change in changes:
            key = (change.cluster, change.name)
            self.state.journal_installed(key, revoke_after)
            self.state.update(key, backoff=Backoff())
            if self._on_installed is not None:
                self._on_installed(change)
        self.save_quietly({c.cluster for c in changes})

    def completed(self, changes: Sequence[Change]) -> None:
        assert self.state is not None
        for change in changes:
            key = (change.cluster, change.name)
            pending = self.state.pending.get(key)
            ran_from = change.previous.pem if change.previous else None
            if pending is not None and pending.old_pem != ran_from:
                # merged with an earlier unfinished change: the follow-ups that just ran
                # started from the wrong certificate; the journal replay runs the right ones
                logger.info(
                    "%s: follow-ups of an earlier change run from the journal", key_text(key)
                )
                continue
            self._complete(key)
        self.save_quietly({c.cluster for c in changes})

    def _complete(self, key: Key) -> None:
        assert self.state is not None
        intent = self.state.complete(key, revoke_after=self.clock() + self._grace())
        if intent is None:
            return
        self.rotations[(*key, "success")] += 1
        _log_intent("rotated", intent)

    # -- replay ------------------------------------------------------------------------------

    def unresolved(self) -> set[Key]:
        """Certificates whose last install may or may not have happened."""
        return set(self.state.journal) if self.state is not None else set()

    def replay(self, rotator: Rotator) -> dict[Key, str]:
        """Resolve the journal: a certificate issued but never sent is an orphan (revoked);
        an install that may have happened is looked up on the cluster; pending follow-ups run.
        Returns an error by certificate for what is still pending."""
        state = self.state
        if state is None or not (state.journal or state.pending):
            return {}
        errors = self._resolve_journal(state, rotator)
        pending = list(state.pending.values())
        errors.update(self._run_pending_followups(pending, rotator))
        for intent in pending:
            if intent.key not in errors:
                self._complete(intent.key)
        self.save_quietly()
        return errors

    def _resolve_journal(self, state: State, rotator: Rotator) -> dict[Key, str]:
        """Each journal entry: issued and never sent is an orphan; an install that may have
        happened is looked up on its cluster (one read per cluster). Errors by certificate."""
        now = self.clock()
        errors: dict[Key, str] = {}
        served: dict[str, dict[str, str]] = {}
        for key, intent in sorted(state.journal.items()):
            if intent.phase == "issued":
                state.orphan(intent, now)
                _log_intent("issued but never installed (will be revoked)", intent)
            elif intent.phase == "installing":
                error = self._resolve_install(state, rotator, intent, served, now)
                if error is not None:
                    errors[key] = error
        return errors

    def _resolve_install(
        self,
        state: State,
        rotator: Rotator,
        intent: Intent,
        served: dict[str, dict[str, str]],
        now: datetime,
    ) -> str | None:
        """Did the interrupted install of ``intent`` happen? Recorded either way; an error when
        the cluster cannot tell (the entry stays)."""
        client = rotator.clusters.get(intent.cluster)
        if client is None:
            logger.warning("%s: cluster no longer configured; dropped", key_text(intent.key))
            state.orphan(intent, now)
            return None
        if intent.name.startswith(DATABASE_PREFIX):
            return self._resolve_database_install(state, rotator, intent, now)
        if intent.cluster not in served:
            try:
                certs = client.certificates()
            except VaultBridgeError as exc:
                return str(exc)
            served[intent.cluster] = {n: c.info.fingerprint for n, c in certs.items()}
        fingerprint = intent.info.fingerprint
        if served[intent.cluster].get(intent.name) == fingerprint:
            state.journal_installed(intent.key, now + self._grace())
            _log_intent("the interrupted install did happen", intent)
        elif rotator.served_elsewhere(intent.cluster, intent.name, fingerprint):
            # Revoked only on positive proof: the read-back shows another certificate AND the
            # listener (where there is one) serves another.
            state.orphan(intent, now)
            _log_intent("the interrupted install did not happen (will be revoked)", intent)
        else:
            return (
                f"{key_text(intent.key)}: the read-back shows another certificate, but the "
                f"listener does not prove it; kept in the journal, not revoked"
            )
        return None

    def _resolve_database_install(
        self, state: State, rotator: Rotator, intent: Intent, now: datetime
    ) -> str | None:
        """The interrupted install of a database's own certificate: read back from the
        database (and its endpoint); kept in the journal when that cannot tell."""
        known = rotator.database_install_known(intent.cluster, intent.name, intent.info.fingerprint)
        if known is True:
            state.journal_installed(intent.key, now + self._grace())
            _log_intent("the interrupted install did happen", intent)
        elif known is False:
            state.orphan(intent, now)
            _log_intent("the interrupted install did not happen (will be revoked)", intent)
        else:
            return (
                f"{key_text(intent.key)}: the database does not show whether the install "
                "happened; kept in the journal, not revoked"
            )
        return None

    def _run_pending_followups(self, pending: Sequence[Intent], rotator: Rotator) -> dict[Key, str]:
        """The follow-ups of installs whose follow-ups are pending; errors by certificate."""
        needing = [i for i in pending if _needs_followup(i.name)]
        if not needing or rotator.followups is None:
            return {}
        logger.info(
            "running %d pending follow-up(s) from the journal: %s",
            len(needing),
            ", ".join(key_text(i.key) for i in needing),
        )
        try:
            failed = rotator.followups.run([i.cert_change for i in needing])
        except VaultBridgeError as exc:
            failed = {i.key: str(exc) for i in needing}
        for failed_key, message in failed.items():
            logger.error("follow-up of %s failed: %s", key_text(failed_key), message)
        return failed


def _log_intent(message: str, intent: Intent) -> None:
    """One INFO line for a state change of the journaled certificate ``intent``."""
    log_change(
        message,
        cluster=intent.cluster,
        certificate=intent.name,
        serial=intent.serial,
        not_after=intent.not_after,
    )


def _needs_followup(name: str) -> bool:
    try:
        return CertName(name).needs_followup
    except ValueError:
        return False
