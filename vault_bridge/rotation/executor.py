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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

from vault_bridge.adapters.ports import (
    Clock,
    ClusterCertificates,
    ClusterDatabaseCertificates,
    ClusterOcsp,
    Sleep,
    TlsProbe,
    Vault,
)
from vault_bridge.adapters.tls_probe import served_certificate
from vault_bridge.config.schema import MTLS_TRUSTED_CA, CertSpec, ClusterSettings, Settings
from vault_bridge.decisions.followup_plan import WaitingOn
from vault_bridge.decisions.install import CertUpload, InstallBatch, install_batches
from vault_bridge.decisions.renewal import Action, CertStatus, classify, plan
from vault_bridge.errors import (
    ClusterError,
    DeferredError,
    VaultBridgeError,
    VerificationError,
)
from vault_bridge.models.certificates import (
    CertChange,
    CertificateInfo,
    CertName,
    InstalledCertificate,
    IssuedCertificate,
)
from vault_bridge.models.cluster import OcspStatus
from vault_bridge.models.times import iso
from vault_bridge.models.vault import MountIssuers
from vault_bridge.rotation.databases import DatabaseCertificates, database_install_known
from vault_bridge.rotation.keys import build_csr, check_before_install, generate_key, key_to_pem
from vault_bridge.rotation.login import LoginCertificate
from vault_bridge.rotation.ocsp import after_proxy_change, check_proxy_before_install, read_ocsp
from vault_bridge.rotation.throttle import VaultThrottle
from vault_bridge.rotation.trusted_ca import (
    reconcile_trusted_ca,
    trusted_ca_status,
    unknown_status,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")

Key = tuple[str, str]  # (cluster, certificate name)
Read = tuple[list[CertStatus], dict[str, InstalledCertificate]]


@dataclass(frozen=True)
class Change:
    """A certificate installed on a cluster in this pass, with the one it replaced."""

    cluster: str
    name: str
    issued: IssuedCertificate
    previous: InstalledCertificate | None

    @property
    def cert_change(self) -> CertChange:
        old = self.previous.pem if self.previous else None
        return CertChange(self.cluster, self.name, self.issued.chain_pem, old)


# How many times one install request is sent, at most, when each attempt timed out or failed
# with nothing in place on the read-back (the read-back always comes first).
INSTALL_ATTEMPTS = 3
# Between two read-backs of an internode install (the REST API may be away for minutes).
INTERNODE_POLL = 5.0


@dataclass(frozen=True)
class Outcome:
    cluster: str
    name: str
    # "installed" | "partial" (in place, but not every node confirmed: HTTP 409) |
    # "unconfirmed" (an internode install the cluster has not confirmed yet) | "failed"
    result: str
    serial: str | None = None
    not_after: datetime | None = None
    error: str | None = None
    reason: str = ""
    note: str | None = None  # what "partial" / "unconfirmed" means for this one


@dataclass
class PassResult:
    outcomes: list[Outcome] = field(default_factory=list)
    statuses: list[CertStatus] = field(default_factory=list)
    cluster_errors: dict[str, str] = field(default_factory=dict)
    # certificates renewed outside every maintenance window (the safety margin was reached)
    window_overrides: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.cluster_errors

    def summary(self) -> str:
        installed = sum(1 for o in self.outcomes if o.result == "installed")
        parts = [f"{installed} installed"]
        for result, label in (("partial", "partially applied"), ("unconfirmed", "not confirmed")):
            those = [o for o in self.outcomes if o.result == result]
            if those:
                names = ", ".join(f"{o.name} on {o.cluster}" for o in those)
                parts.append(f"{len(those)} installed, {label} ({names}: {those[0].note})")
        if self.failed:
            first = self.failed[0]
            parts.append(
                f"{len(self.failed)} of {len(self.outcomes)} certificates failed: "
                f"{first.name} on {first.cluster}: {first.error}"
            )
        for cluster, error in self.cluster_errors.items():
            parts.append(f"cluster {cluster} failed: {error}")
        return "; ".join(parts)


class RotationHooks(Protocol):
    """Points where the agent (state journal) and the follow-ups plug into a pass."""

    def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
        """Called before asking Vault; raising skips the certificate (e.g. runaway guard).
        ``explicit``: the operator asked for this certificate (``issue``); it is passed only
        when true."""

    def issued(self, spec: CertSpec, issued: IssuedCertificate) -> None:
        """Called once Vault issued (before the install)."""

    def before_install(self, cluster: str, changes: Sequence[Change]) -> None:
        """Called right before the install request (write the intent)."""

    def installed(self, changes: Sequence[Change]) -> None:
        """Called once per pass with every verified install, before the follow-ups run
        (record that the installs happened and the follow-ups are pending)."""

    def completed(self, changes: Sequence[Change]) -> None:
        """Called when the changes and their follow-ups are done (clear the intent)."""


class FollowUpRunner(Protocol):
    """Runs the Active-Active and Replica Of follow-ups for changed certificates."""

    def run(self, changes: Sequence[CertChange]) -> dict[tuple[str, str], str]:
        """Returns an error message by (cluster, name) for each follow-up that failed."""
        ...


class FollowUpWindow(Protocol):
    """The follow-ups of one pass's proxy/syncer installs, open around them."""

    @property
    def refused(self) -> Mapping[str, str]:
        """By cluster: why its proxy/syncer install must not go ahead in this pass."""
        ...

    def installed(self, cluster: str, names: Sequence[str]) -> None:
        """The install request on ``cluster`` answered 200 for ``names`` (proxy/syncer)."""
        ...

    def finish(self, changes: Sequence[CertChange]) -> dict[tuple[str, str], str]:
        """Step 2 for the installed and verified ``changes``; an error by (cluster, name)."""
        ...


@runtime_checkable
class WindowedFollowUps(FollowUpRunner, Protocol):
    """A follow-up runner that opens a window around the installs, to keep the time between
    step 1 and step 2 short: :class:`vault_bridge.rotation.followups.FollowUps`."""

    def window(
        self, clusters: Sequence[str], changes: Sequence[CertChange] = ()
    ) -> AbstractContextManager[FollowUpWindow]:
        """Opened right before installing ``changes`` (proxy/syncer) on ``clusters``
        (discovery, tasks in flight, the lock, step 2 armed); closed once step 2 is over."""
        ...


class _WithoutWindow:
    """The window of a runner that has none (or of no runner): step 2 after the installs."""

    refused: Mapping[str, str] = {}

    def __init__(self, runner: FollowUpRunner | None) -> None:
        self._runner = runner

    def installed(self, cluster: str, names: Sequence[str]) -> None:
        return None

    def finish(self, changes: Sequence[CertChange]) -> dict[tuple[str, str], str]:
        if not changes or self._runner is None:
            return {}
        return self._runner.run(changes)


class NoHooks:
    def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
        return None

    def issued(self, spec: CertSpec, issued: IssuedCertificate) -> None:
        return None

    def before_install(self, cluster: str, changes: Sequence[Change]) -> None:
        return None

    def installed(self, changes: Sequence[Change]) -> None:
        return None

    def completed(self, changes: Sequence[Change]) -> None:
        return None


class _DatabaseHooks:
    """The rotation hooks as a database certificate (``bdb:<database>``) calls them."""

    def __init__(self, hooks: RotationHooks) -> None:
        self.hooks = hooks

    def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
        if explicit:
            self.hooks.before_issue(spec, explicit=True)
        else:
            self.hooks.before_issue(spec)

    def issued(self, spec: CertSpec, issued: IssuedCertificate) -> None:
        self.hooks.issued(spec, issued)

    def before_install(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None:
        self.hooks.before_install(cluster, [Change(cluster, name, issued, previous)])

    def installed(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None:
        self.hooks.installed([Change(cluster, name, issued, previous)])

    def completed(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None:
        self.hooks.completed([Change(cluster, name, issued, previous)])


class Rotator:
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

    # -- reading -------------------------------------------------------------------------

    def issuers(self, mount: str) -> MountIssuers:
        """Every issuer of a PKI mount with its chain (LIST <mount>/issuers, then each one's
        GET <mount>/issuer/<id>/json), read once per pass."""
        with self._vault_lock:
            if mount not in self._issuers:
                self._issuers[mount] = self.vault.mount_issuers(mount)
            return self._issuers[mount]

    def _map(self, fn: Callable[[U], T], items: Sequence[U]) -> list[T]:
        """``fn`` over ``items`` on the bounded pool, results in the order of ``items``."""
        if self.concurrency == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        workers = min(self.concurrency, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rotate") as pool:
            futures: list[Future[T]] = [pool.submit(fn, item) for item in items]
            return [f.result() for f in futures]

    def _trust_own_api_cert(self, cluster: ClusterSettings) -> None:
        """Trust the chains of every issuer of the mount for the cluster's API once we manage
        its ``api`` certificate: an intermediate or root rotation never locks us out."""
        spec = cluster.spec(CertName.API)
        if spec is not None:
            self.clusters[cluster.name].set_trust(self.issuers(spec.pki_mount).chains())

    def _migration_since(self, spec: CertSpec, mount: MountIssuers, now: datetime) -> datetime:
        target = mount.find(spec.issuer_ref) if spec.issuer_ref else mount.default
        if target is None:
            return now
        with self._vault_lock:
            return self._target_seen.setdefault((mount.mount, target.issuer_id), now)

    def _revoked(self, spec: CertSpec, installed: InstalledCertificate | None) -> bool:
        """Whether Vault positively says the installed certificate is revoked (GET
        <mount>/cert/<serial>); an unknown serial or a failed read is not proof."""
        if installed is None or installed.info.self_signed:
            return False
        try:
            answer = self.vault.certificate_revoked(spec.pki_mount, installed.info.serial)
        except VaultBridgeError as exc:
            logger.warning(
                "%s on %s: cannot check the revocation of serial %s: %s",
                spec.name.value,
                spec.cluster,
                installed.info.serial,
                exc,
            )
            return False
        return answer is True

    def trust_vault_chains(self) -> None:
        """Trust Vault's chain for every cluster whose ``api`` certificate we manage (what a
        pass does first), so that a check run before any pass reaches a rotated API."""
        for cluster in self.settings.clusters:
            try:
                self._trust_own_api_cert(cluster)
            except VaultBridgeError as exc:
                logger.debug("cluster %s: Vault chain not trusted yet: %s", cluster.name, exc)

    def statuses_for(
        self, cluster: ClusterSettings
    ) -> tuple[list[CertStatus], dict[str, InstalledCertificate]]:
        self._trust_own_api_cert(cluster)
        installed = self.clusters[cluster.name].certificates()
        now = self.clock()
        statuses = []
        for spec in cluster.certificates:
            mount = self.issuers(spec.pki_mount)
            current = installed.get(spec.name.value)
            status = classify(
                spec, current, mount, now, migration_since=self._migration_since(spec, mount, now)
            )
            if status.state in ("ok", "due") and self._revoked(spec, current):
                status = classify(spec, current, mount, now, revoked=True)
            statuses.append(status)
        if cluster.trusted_ca_mount is not None:
            statuses.append(self._trusted_ca_status(cluster, installed.get(MTLS_TRUSTED_CA)))
        ocsp = self._read_ocsp(cluster) if cluster.spec(CertName.PROXY) else None
        if ocsp is not None:
            statuses = [
                replace(s, ocsp=ocsp.cert_status) if s.name == CertName.PROXY.value else s
                for s in statuses
            ]
        return statuses, installed

    def _trusted_ca_status(
        self, cluster: ClusterSettings, installed: InstalledCertificate | None
    ) -> CertStatus:
        """The row of ``mtls_trusted_ca`` (kept by :meth:`reconcile_trusted_cas`, never an
        action of the plan's own)."""
        try:
            return trusted_ca_status(cluster, installed, self.vault, self.logins.get(cluster.name))
        except VaultBridgeError as exc:
            logger.warning("%s on %s: %s", MTLS_TRUSTED_CA, cluster.name, exc)
            return unknown_status(cluster.name)

    def _read_ocsp(self, cluster: ClusterSettings) -> OcspStatus | None:
        """What the cluster staples for its proxy certificate (None: OCSP off or unknown)."""
        client = self.clusters[cluster.name]
        status = read_ocsp(client) if isinstance(client, ClusterOcsp) else None
        if status is None:
            self.ocsp.pop(cluster.name, None)
        else:
            self.ocsp[cluster.name] = status
        return status

    def status(self) -> PassResult:
        """Classify every configured certificate (one read of each cluster, on the pool);
        clusters that fail are reported apart."""
        with self._vault_lock:
            self._issuers.clear()
        self.databases.clear()
        result = PassResult()
        names = [c.name for c in self.settings.clusters]
        for name, answer in zip(names, self._map(self._read_cluster, names), strict=True):
            if isinstance(answer, str):
                result.cluster_errors[name] = answer
            else:
                result.statuses.extend(answer[0])
        return result

    def _read_cluster(self, name: str) -> Read | str:
        """One cluster's statuses (its databases' too) and what it serves; the error text
        when it cannot be read."""
        cluster = self.settings.cluster(name)
        try:
            statuses, installed = self.statuses_for(cluster)
        except VaultBridgeError as exc:
            return str(exc)
        client = self.clusters[name]
        if cluster.databases and isinstance(client, ClusterDatabaseCertificates):
            now = self.clock()
            with self._read_lock:
                statuses = [*statuses, *self.databases.read(cluster, client, self.issuers, now)]
        return statuses, installed

    def plan(self, force: Iterable[tuple[str, str]] = ()) -> tuple[list[Action], PassResult]:
        current = self.status()
        actions = plan(
            current.statuses,
            force=force,
            replace_foreign=self.settings.agent.replace_foreign,
            now=self.clock(),
        )
        return actions, current

    # -- acting --------------------------------------------------------------------------

    def obtain(self, spec: CertSpec, *, explicit: bool = False) -> IssuedCertificate:
        """Get a new certificate from Vault and check it; never returns one unfit to install.
        ``explicit``: the operator asked for it (``issue``), past the runaway guard too.

        Safe to call from several threads: the hooks and the token upkeep run one at a time,
        the Vault requests within :attr:`throttle`."""
        with self._hooks_lock:
            if explicit:
                self.hooks.before_issue(spec, explicit=True)
            else:
                self.hooks.before_issue(spec)
        with self._vault_lock:
            self.vault.ensure_token()
        key = None
        what = f"{spec.name.value} on {spec.cluster}"
        if spec.mode == "sign":
            key = generate_key(spec.key_type, spec.key_bits)
            csr = build_csr(key, spec.common_name, spec.alt_names, spec.ip_sans)
            data = self.throttle.call(
                what,
                lambda: self.vault.sign(
                    spec.pki_mount,
                    spec.role,
                    csr,
                    common_name=spec.common_name,
                    alt_names=spec.alt_names,
                    ip_sans=spec.ip_sans,
                    ttl=spec.ttl,
                    issuer_ref=spec.issuer_ref,
                ),
            )
            issued = IssuedCertificate.from_vault(data, private_key=key_to_pem(key))
        else:
            issued = self.throttle.call(
                what,
                lambda: self.vault.issue(
                    spec.pki_mount,
                    spec.role,
                    common_name=spec.common_name,
                    alt_names=spec.alt_names,
                    ip_sans=spec.ip_sans,
                    ttl=spec.ttl,
                    issuer_ref=spec.issuer_ref,
                ),
            )
        with self._hooks_lock:
            self.hooks.issued(spec, issued)
        # A key made here is compared with the certificate as it is; one from Vault is checked.
        check_before_install(issued, spec.name, now=self.clock(), requested_ttl=spec.ttl, key=key)
        logger.info(
            "issued %s for %s: serial %s, not_after %s",
            spec.name.value,
            spec.cluster,
            issued.serial,
            iso(issued.not_after),
        )
        return issued

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

    def _obtain_one(self, action: Action) -> IssuedCertificate | Outcome:
        spec = self.settings.cluster(action.cluster).spec(action.name)
        assert spec is not None
        client = self.clusters[action.cluster]
        try:
            issued = self.obtain(spec, explicit=action.reason == "forced")
            if action.name == CertName.PROXY.value and isinstance(client, ClusterOcsp):
                check_proxy_before_install(client, issued)
            return issued
        except DeferredError as exc:
            logger.info("%s on %s: deferred: %s", action.name, action.cluster, exc)
            return Outcome(action.cluster, action.name, "failed", error=str(exc))
        except VaultBridgeError as exc:
            logger.error("%s on %s: %s", action.name, action.cluster, exc)
            return Outcome(action.cluster, action.name, "failed", error=str(exc))

    def report_ocsp(self, changes: Sequence[Change]) -> None:
        """After a proxy change: stapling on with Vault (``ocsp_responder``), ask the responder
        now, record and log the status. Never fails the change: it is installed."""
        for change in changes:
            if change.name != CertName.PROXY.value:
                continue
            cluster = self.settings.cluster(change.cluster)
            client = self.clusters[change.cluster]
            if not isinstance(client, ClusterOcsp):
                continue
            try:
                status = after_proxy_change(
                    cluster, client, change.issued, self.settings.vault.address or ""
                )
            except VaultBridgeError as exc:
                logger.warning("cluster %s: OCSP check after the install: %s", change.cluster, exc)
                continue
            if status is None:
                self.ocsp.pop(change.cluster, None)
            else:
                self.ocsp[change.cluster] = status

    def _install_cluster(
        self, cluster_name: str, ready: Mapping[str, Change], window: FollowUpWindow
    ) -> tuple[list[Change], list[Outcome]]:
        """Install ``ready`` on one cluster, then read it back once and check what is
        served; returns the verified changes and the failures."""
        settings = self.settings.cluster(cluster_name)
        client = self.clusters[cluster_name]
        try:
            version = client.lowest_version()
        except VaultBridgeError as exc:
            return [], [Outcome(cluster_name, n, "failed", error=str(exc)) for n in ready]
        errors = self._install(client, list(ready.values()), version)
        done = [n for n in ready if CertName(n).needs_followup and n not in errors]
        if done:
            with self._hooks_lock:
                window.installed(cluster_name, done)
        sent = [c for n, c in ready.items() if n not in errors]
        errors.update(self._verify_all(settings, client, sent))
        installed: list[Change] = []
        failed: list[Outcome] = []
        for name, change in ready.items():
            error = errors.get(name)
            if error is not None:
                logger.error("%s on %s: %s", name, cluster_name, error)
                failed.append(Outcome(cluster_name, name, "failed", error=error))
                continue
            logger.info(
                "installed %s on %s: serial %s, not_after %s",
                name,
                cluster_name,
                change.issued.serial,
                iso(change.issued.not_after),
            )
            installed.append(change)
        return installed, failed

    def _verify_all(
        self, settings: ClusterSettings, client: ClusterCertificates, sent: Sequence[Change]
    ) -> dict[str, str]:
        """One read of the cluster verifies every install sent (an internode certificate
        waits for the REST API on its own); an error by name."""
        errors: dict[str, str] = {}
        ordinary = [c for c in sent if not CertName(c.name).internode]
        served: Mapping[str, InstalledCertificate] = {}
        if ordinary:
            try:
                served = client.certificates()
            except VaultBridgeError as exc:
                errors.update({c.name: str(exc) for c in ordinary})
                ordinary = []
        for change in [*ordinary, *(c for c in sent if CertName(c.name).internode)]:
            try:
                if CertName(change.name).internode:
                    self._verify_internode(settings, client, change)
                else:
                    self._verify(settings, served, change)
            except VaultBridgeError as exc:
                errors[change.name] = str(exc)
        return errors

    def _install(
        self, client: ClusterCertificates, changes: Sequence[Change], version: tuple[int, ...]
    ) -> dict[str, str]:
        """Install ``changes``; returns an error message per certificate that failed."""
        by_name = {c.name: c for c in changes}
        errors: dict[str, str] = {}
        if client.name in self._bulk_unsupported:
            version = (0,)
        for batch in install_batches(list(by_name), version):
            batch_changes = [by_name[n] for n in batch.names]
            try:
                with self._hooks_lock:
                    self.hooks.before_install(client.name, batch_changes)
            except VaultBridgeError as exc:
                # The intent could not be recorded: this batch is not sent.
                errors.update({c.name: f"not installed: {exc}" for c in batch_changes})
                continue
            errors.update(self._send_batch(client, batch, batch_changes))
        return errors

    def _send_batch(
        self, client: ClusterCertificates, batch: InstallBatch, changes: Sequence[Change]
    ) -> dict[str, str]:
        uploads = [self._upload(c) for c in changes]
        if batch.endpoint == "bulk":
            try:
                return self._send_checked(client, uploads, bulk=True)
            except ClusterError as exc:
                if exc.status in (404, 405):
                    logger.info(
                        "cluster %s has no bulk certificate endpoint (HTTP %s); using update_cert",
                        client.name,
                        exc.status,
                    )
                    self._bulk_unsupported.add(client.name)
                elif len(uploads) > 1 and exc.status in (400, 403, 406):
                    # One bad item rejects the whole request: install one by one so the
                    # others still go in and the error names the certificate at fault.
                    return self._one_by_one(client, uploads, bulk=True)
                else:
                    return {u.name: str(exc) for u in uploads}
        return self._one_by_one(client, uploads, bulk=False)

    def _upload(self, change: Change) -> CertUpload:
        """The install item; an internode certificate carries its whole chain, root included
        (security/encryption/internode-encryption.md: the cluster builds its internode trust
        from it)."""
        if not CertName(change.name).internode:
            return CertUpload.of(change.name, change.issued)
        spec = self.settings.cluster(change.cluster).spec(change.name)
        mount_chain = self.issuers(spec.pki_mount).chains() if spec is not None else []
        return CertUpload.with_root(change.name, change.issued, mount_chain)

    def _one_by_one(
        self, client: ClusterCertificates, uploads: Sequence[CertUpload], *, bulk: bool
    ) -> dict[str, str]:
        errors: dict[str, str] = {}
        for upload in uploads:
            try:
                errors.update(self._send_checked(client, [upload], bulk=bulk))
            except ClusterError as exc:
                errors[upload.name] = str(exc)
        return errors

    def _send_checked(
        self, client: ClusterCertificates, uploads: Sequence[CertUpload], *, bulk: bool
    ) -> dict[str, str]:
        """Send one install request; after a timeout, a dropped connection, a 409 or a 5xx,
        read the certificates back and send again only what is not in place (at most
        :data:`INSTALL_ATTEMPTS` requests). Returns an error per certificate not in place;
        a request the cluster refused outright is raised."""
        pending = list(uploads)
        last: ClusterError | None = None
        for attempt in range(INSTALL_ATTEMPTS):
            try:
                if bulk:
                    client.put_certificates(pending)
                else:
                    client.update_cert(pending[0])
                return {}
            except ClusterError as exc:
                if not exc.retryable:
                    raise
                last = exc
            # An install that timed out may still be applying: give it the backoff first.
            self._sleep(client.backoff * (2**attempt))
            try:
                installed = client.certificates()
            except VaultBridgeError as exc:
                # Cannot tell whether it went in: never send it blind; the journal keeps the
                # intent and the next pass reads it back.
                return {u.name: f"{last}; the read-back failed too: {exc}" for u in pending}
            in_place = [u for u in pending if _is_installed(installed, u)]
            for upload in in_place:
                if last.status == 409:
                    why = "HTTP 409, not all nodes have been updated; the cluster reports it"
                    self._notes[(client.name, upload.name)] = ("partial", why)
                logger.warning(
                    "%s on %s: %s, but the read-back shows it installed",
                    upload.name,
                    client.name,
                    last.message,
                )
            pending = [u for u in pending if u not in in_place]
            if not pending:
                return {}
            if attempt < INSTALL_ATTEMPTS - 1:
                logger.warning(
                    "%s on %s: %s and not in place; sending again (%d/%d)",
                    ", ".join(u.name for u in pending),
                    client.name,
                    last.message,
                    attempt + 2,
                    INSTALL_ATTEMPTS,
                )
        return {u.name: str(last) for u in pending}

    def _verify(
        self,
        settings: ClusterSettings,
        served: Mapping[str, InstalledCertificate],
        change: Change,
    ) -> None:
        """Compare the read-back ``served`` with the install, then check the served leaf."""
        expected = change.issued.info.fingerprint
        installed = served.get(change.name)
        if installed is None or installed.info.fingerprint != expected:
            raise VerificationError(
                "the cluster reports a different certificate after the install",
                cluster=settings.name,
                certificate=change.name,
            )
        endpoint = settings.endpoint_for(CertName(change.name))
        if endpoint is None:
            return
        leaf: CertificateInfo | None = None
        for attempt in range(self._probe_attempts):
            try:
                leaf = self._probe(endpoint)
            except VerificationError:
                leaf = None
            if leaf is not None and leaf.fingerprint == expected:
                return
            if attempt < self._probe_attempts - 1:
                self._sleep(0.2 * (attempt + 1))
        what = f"serial {leaf.serial}" if leaf else "nothing"
        raise VerificationError(
            f"{endpoint} serves {what}, not the new certificate {change.issued.serial}",
            cluster=settings.name,
            certificate=change.name,
        )

    def database_install_known(self, cluster: str, name: str, fingerprint: str) -> bool | None:
        """Whether the interrupted install of a database's own certificate (``bdb:<name>``)
        happened: True, False on positive proof only, None when it cannot be told."""
        client = self.clusters.get(cluster)
        if not isinstance(client, ClusterDatabaseCertificates):
            return None
        return database_install_known(
            self.settings.cluster(cluster), client, name, fingerprint, self._probe
        )

    def served_elsewhere(self, cluster: str, name: str, fingerprint: str) -> bool:
        """Positive proof that the certificate ``fingerprint`` is not served for ``name``: the
        TLS probe of its listener answers another certificate, or ``name`` has no listener.
        A probe that fails (nothing answers, a handshake error) proves nothing."""
        endpoint = self.settings.cluster(cluster).endpoint_for(CertName(name))
        if endpoint is None:
            return True
        try:
            served = self._probe(endpoint)
        except VaultBridgeError as exc:
            logger.warning("%s on %s: %s serves nothing readable: %s", name, cluster, endpoint, exc)
            return False
        return served.fingerprint != fingerprint

    def _verify_internode(
        self, settings: ClusterSettings, client: ClusterCertificates, change: Change
    ) -> None:
        """After an internode change the REST API may stay away for minutes (release notes
        RS208996): read back until ``internode_confirm_timeout``; while it cannot answer, the
        outcome is "installed, not yet confirmed", never a failure. A read-back that shows
        another certificate is a failure."""
        waited = 0.0
        while True:
            try:
                installed = client.certificates().get(change.name)
            except ClusterError as exc:
                if not exc.retryable:
                    raise
                if waited >= settings.internode_confirm_timeout:
                    why = (
                        f"the REST API did not answer for {waited:g}s after the install "
                        f"({exc.message}); the next pass reads it back"
                    )
                    self._notes[(settings.name, change.name)] = ("unconfirmed", why)
                    logger.warning(
                        "%s on %s: installed, not yet confirmed: %s",
                        change.name,
                        settings.name,
                        why,
                    )
                    return
                self._sleep(INTERNODE_POLL)
                waited += INTERNODE_POLL
                continue
            if installed is None or installed.info.fingerprint != change.issued.info.fingerprint:
                raise VerificationError(
                    "the cluster reports a different certificate after the install",
                    cluster=settings.name,
                    certificate=change.name,
                )
            return


def _add_cluster_error(result: PassResult, cluster: str, error: str) -> None:
    current = result.cluster_errors.get(cluster)
    if current is None:
        result.cluster_errors[cluster] = error
    elif error not in current:
        result.cluster_errors[cluster] = f"{current}; {error}"


def _is_installed(installed: Mapping[str, InstalledCertificate], upload: CertUpload) -> bool:
    """The read-back holds exactly the leaf of ``upload``."""
    current = installed.get(upload.name)
    if current is None:
        return False
    try:
        return current.info.fingerprint == CertificateInfo.from_pem(upload.certificate).fingerprint
    except VaultBridgeError:
        return False
