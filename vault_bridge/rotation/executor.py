"""The executor: carries out a plan through the ports (Vault, clusters, TLS probes).

A pass reads what every cluster serves, classifies it (:mod:`vault_bridge.decisions.renewal`), obtains a
certificate from Vault for each one due, checks it, installs it, reads it back and checks the
served leaf. One certificate's failure never stops the others.

Work runs on a bounded pool (``[agent] concurrency``): every cluster is read once, and a
cluster's due certificates are obtained (key, CSR, Vault, checks) as soon as its read is
classified, while the other clusters are still being read; once every certificate is obtained,
every cluster is installed at once, each on its own - one request per batch, the internode
certificates in a batch of their own, then one read to verify the cluster. The follow-ups'
window opens before the first install and closes after the last, so the Active-Active step 2
of a CRDB goes once, after the last install on every cluster it spans. The hooks (the journal)
and the window's ``installed`` are called one at a time, never concurrently.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import datetime

from vault_bridge.adapters.ports import (
    Clock,
    ClusterCertificates,
    ClusterDatabaseCertificates,
    Sleep,
    TlsProbe,
    Vault,
)
from vault_bridge.adapters.tls_probe import served_certificate
from vault_bridge.config.schema import MTLS_TRUSTED_CA
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.followup_plan import WaitingOn
from vault_bridge.decisions.renewal import Action, CertStatus, plan
from vault_bridge.errors import (
    VaultBridgeError,
)
from vault_bridge.models.certificates import (
    CertificateInfo,
    CertName,
    IssuedCertificate,
)
from vault_bridge.models.cluster import OcspStatus
from vault_bridge.models.vault import MountIssuers
from vault_bridge.rotation.databases import DatabaseCertificates
from vault_bridge.rotation.hooks import (
    FollowUpRunner,
    FollowUpWindow,
    NoHooks,
    RotationHooks,
    WindowedFollowUps,
    _DatabaseHooks,
    _WithoutWindow,
)
from vault_bridge.rotation.installing import Installing
from vault_bridge.rotation.login import LoginCertificate
from vault_bridge.rotation.obtaining import Obtaining
from vault_bridge.rotation.reads import Reading
from vault_bridge.rotation.results import Change, Key, Outcome, PassResult, Read
from vault_bridge.rotation.throttle import VaultThrottle
from vault_bridge.rotation.trusted_ca import (
    reconcile_trusted_ca,
)

logger = logging.getLogger(__name__)


class Rotator(Reading, Obtaining, Installing):
    def __init__(
        self,
        settings: Settings,
        vault: Vault,
        clusters: Mapping[str, ClusterCertificates],
        *,
        clock: Clock,
        hooks: RotationHooks | None = None,
        followups: FollowUpRunner | None = None,
        probe: TlsProbe = served_certificate,
        sleep: Sleep = time.sleep,
        probe_attempts: int = 5,
        concurrency: int | None = None,
        vault_sleep: Sleep | None = None,
    ) -> None:
        """``concurrency`` defaults to ``[agent] concurrency``; ``vault_sleep`` (default:
        ``sleep``) waits between retries after Vault pushed back (429/5xx)."""
        self.settings = settings
        self.vault = vault
        self.clusters = clusters
        self.clock = clock
        self.hooks: RotationHooks = hooks or NoHooks()
        self.followups = followups
        self._probe = probe
        self._sleep = sleep
        self._probe_attempts = probe_attempts
        self._issuers: dict[str, MountIssuers] = {}
        # (mount, issuer ID) -> when this process first saw that issuer sign new certificates
        # (the start of an issuer_migration window)
        self._target_seen: dict[tuple[str, str], datetime] = {}
        self._bulk_unsupported: set[str] = set()
        # The login certificates of clusters with login = "certificate" (set by the wiring).
        self.logins: Mapping[str, LoginCertificate] = {}
        # The proxy certificate's OCSP status by cluster, as last read (stapling on only).
        self.ocsp: dict[str, OcspStatus] = {}
        # Databases with a certificate of their own, as the last status read found them.
        self.databases = DatabaseCertificates()
        self.concurrency = max(1, concurrency or settings.agent.concurrency)
        self.throttle = VaultThrottle(self.concurrency, sleep=vault_sleep or sleep)
        self._hooks_lock = threading.RLock()  # hooks and the window's notices: one at a time
        self._vault_lock = threading.Lock()  # token upkeep and the issuers cache
        self._read_lock = threading.Lock()  # the databases' and OCSP records of a read
        # (cluster, name) -> ("partial" | "unconfirmed", why), for this pass's outcomes
        self._notes: dict[tuple[str, str], tuple[str, str]] = {}

    # -- acting --------------------------------------------------------------------------

    def run_once(
        self,
        *,
        force: Iterable[tuple[str, str]] = (),
        only: set[tuple[str, str]] | None = None,
    ) -> PassResult:
        """One reconcile pass over every cluster and certificate."""
        self._notes = {}
        try:
            return self._pass(set(force), only)
        finally:
            # The pass's read of a cluster serves this pass only.
            for client in self.clusters.values():
                client.forget_certificates()

    def _pass(self, force: set[Key], only: set[Key] | None) -> PassResult:
        trusted = self.reconcile_trusted_cas()
        # Every certificate is obtained before any is installed, so that the installs on
        # several clusters follow each other closely and step 2 of the follow-ups (once per
        # CRDB, after every install) starts as soon as possible after each step 1.
        result, ready, database_actions = self._read_and_obtain(force, only)
        result.outcomes[:0] = trusted
        changes: list[Change] = []
        with self._followup_window(ready, result) as window:
            names = [name for name, cluster_ready in ready.items() if cluster_ready]
            for installed, failed in self._map(
                lambda name: self._install_cluster(name, ready[name], window), names
            ):
                changes.extend(installed)
                result.outcomes.extend(failed)
            if changes:
                with self._hooks_lock:
                    self.hooks.installed(changes)
                needed = [c.cert_change for c in changes if CertName(c.name).needs_followup]
                self._book(changes, window.finish(needed), result)
                self.report_ocsp(changes)
        self._rotate_databases(database_actions, result)
        return result

    def _rotate_databases(self, actions: Sequence[Action], result: PassResult) -> None:
        """Databases due a certificate of their own, after the cluster certificates."""
        clients = {
            name: client
            for name, client in self.clusters.items()
            if isinstance(client, ClusterDatabaseCertificates)
        }
        done = self.databases.rotate(
            actions,
            self.settings,
            clients,
            self.vault,
            now=self.clock,
            probe=self._probe,
            sleep=self._sleep,
            journal=_DatabaseHooks(self.hooks),
        )
        for cluster, name, info, error in done:
            if info is None:
                result.outcomes.append(Outcome(cluster, name, "failed", error=error))
            else:
                result.outcomes.append(
                    Outcome(cluster, name, "installed", info.serial, info.not_after)
                )

    def reconcile_trusted_cas(self) -> list[Outcome]:
        """``mtls_trusted_ca`` of every cluster that has it configured, first in a pass: a
        new CA is trusted before anything (the login certificate) is issued by it."""
        outcomes: list[Outcome] = []
        for cluster in self.settings.clusters:
            if cluster.trusted_ca_mount is None:
                continue
            client = self.clusters[cluster.name]
            try:
                self._trust_own_api_cert(cluster)
                done = reconcile_trusted_ca(
                    cluster, client, self.vault, self.logins.get(cluster.name)
                )
            except VaultBridgeError as exc:
                logger.error("%s on %s: %s", MTLS_TRUSTED_CA, cluster.name, exc)
                outcomes.append(Outcome(cluster.name, MTLS_TRUSTED_CA, "failed", error=str(exc)))
                continue
            if done.installed:
                first = CertificateInfo.from_pem(done.plan.pems[0])
                outcomes.append(
                    Outcome(
                        cluster.name, MTLS_TRUSTED_CA, "installed", first.serial, first.not_after
                    )
                )
        return outcomes

    def _note_window_overrides(self, actions: Sequence[Action], result: PassResult) -> None:
        """A planned renewal going ahead outside every maintenance window: a WARNING each."""
        by_key = {(s.cluster, s.name): s for s in result.statuses}
        for action in actions:
            status = by_key.get((action.cluster, action.name))
            if status is None or action.reason == "forced" or status.state != "due":
                continue
            if status.window_override:
                logger.warning(
                    "%s on %s: renewed outside every maintenance window: less than %d%% of "
                    "its lifetime would be left before the next one",
                    action.name,
                    action.cluster,
                    round(100 * self._margin(action)),
                    extra={"cluster": action.cluster, "certificate": action.name},
                )
                result.window_overrides.append((action.cluster, action.name))

    def _margin(self, action: Action) -> float:
        spec = self.settings.cluster(action.cluster).spec(action.name)
        return spec.window_safety_margin if spec else 0.0

    def _book(
        self, changes: Sequence[Change], followup_errors: Mapping[Key, str], result: PassResult
    ) -> None:
        """The outcome of each installed change, its follow-ups done or failed."""
        for change in changes:
            error = followup_errors.get((change.cluster, change.name))
            if isinstance(error, WaitingOn):
                # Reported against the clusters it waits for; the change stays pending.
                for other in error.clusters:
                    _add_cluster_error(result, other, error)
                error = None
            note = self._notes.get((change.cluster, change.name))
            result.outcomes.append(
                Outcome(
                    change.cluster,
                    change.name,
                    "failed" if error else (note[0] if note else "installed"),
                    change.issued.serial,
                    change.issued.not_after,
                    f"follow-up failed: {error}" if error else None,
                    note=note[1] if note else None,
                )
            )
        with self._hooks_lock:
            self.hooks.completed([c for c in changes if (c.cluster, c.name) not in followup_errors])

    @contextlib.contextmanager
    def _followup_window(
        self, ready: Mapping[str, dict[str, Change]], result: PassResult
    ) -> Iterator[FollowUpWindow]:
        """The follow-ups' window around the proxy/syncer installs about to happen; a cluster
        they are not ready for keeps its current proxy/syncer this pass."""
        followups = self.followups
        clusters = [c for c, r in ready.items() if any(CertName(n).needs_followup for n in r)]
        if not isinstance(followups, WindowedFollowUps) or not clusters:
            yield _WithoutWindow(followups)
            return
        changes = [
            change.cert_change
            for cluster in clusters
            for change in ready[cluster].values()
            if CertName(change.name).needs_followup
        ]
        with followups.window(clusters, changes) as window:
            for cluster, error in window.refused.items():
                for name in [n for n in ready[cluster] if CertName(n).needs_followup]:
                    del ready[cluster][name]
                    logger.error("%s on %s: not installed: %s", name, cluster, error)
                    result.outcomes.append(
                        Outcome(cluster, name, "failed", error=f"not installed: {error}")
                    )
            yield window

    def _read_and_obtain(
        self, force: set[Key], only: set[Key] | None
    ) -> tuple[PassResult, dict[str, dict[str, Change]], list[Action]]:
        """Read every cluster (once) and obtain what is due, on the pool: a cluster's
        certificates are asked of Vault as soon as its own read is classified, while the
        other clusters are still being read. Returns the statuses and failures, by cluster
        and name the certificates ready to install with what each replaces, and the
        databases' own certificates due (rotated after the cluster certificates)."""
        with self._vault_lock:
            self._issuers.clear()
        self.databases.clear()
        names = [c.name for c in self.settings.clusters]
        reads: dict[str, Read | str] = {}
        due: dict[str, list[Action]] = {}
        database_actions: list[Action] = []
        obtained: dict[Key, Future[IssuedCertificate | Outcome]] = {}
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="pass") as pool:
            pending = {pool.submit(self._read_cluster, name): name for name in names}
            for future in as_completed(pending):
                name = pending[future]
                reads[name] = read = future.result()
                if isinstance(read, str):
                    continue
                actions = self._due(read[0], force, only)
                database_actions += [a for a in actions if self.databases.has(a.cluster, a.name)]
                due[name] = [a for a in actions if not self.databases.has(a.cluster, a.name)]
                for action in due[name]:
                    obtained[(name, action.name)] = pool.submit(self._obtain_one, action)
            answers = {key: future.result() for key, future in obtained.items()}
        result = PassResult()
        ready: dict[str, dict[str, Change]] = {}
        for name in names:  # in the order of the configuration, whatever finished first
            read = reads[name]
            if isinstance(read, str):
                result.cluster_errors[name] = read
                continue
            result.statuses.extend(read[0])
            for action in due[name]:
                got = answers[(name, action.name)]
                if isinstance(got, Outcome):
                    result.outcomes.append(got)
                    continue
                change = Change(name, action.name, got, read[1].get(action.name))
                ready.setdefault(name, {})[action.name] = change
        self._note_window_overrides([a for n in names for a in due.get(n, ())], result)
        return result, ready, database_actions

    def _due(
        self, statuses: Sequence[CertStatus], force: set[Key], only: set[Key] | None
    ) -> list[Action]:
        actions = plan(
            statuses,
            force=force,
            replace_foreign=self.settings.agent.replace_foreign,
            now=self.clock(),
        )
        return [
            a
            for a in actions
            if a.name != MTLS_TRUSTED_CA  # reconciled before the pass
            and (only is None or (a.cluster, a.name) in only)
        ]


def _add_cluster_error(result: PassResult, cluster: str, error: str) -> None:
    current = result.cluster_errors.get(cluster)
    if current is None:
        result.cluster_errors[cluster] = error
    elif error not in current:
        result.cluster_errors[cluster] = f"{current}; {error}"
