"""The Active-Active and Replica Of follow-ups of a ``proxy`` or ``syncer`` change, at once.

After step 1 (the install) the cluster rejects connections that use the old certificate, so
every affected CRDB and replica is broken until step 2 ran. :class:`FollowUps` keeps that
window as short as possible. The executor opens it around the installs::

    with followups.window(clusters, changes) as window:   # lock, discovery, step 2 armed
        ...install, except on the clusters in window.refused...
        window.installed(cluster, names)                   # at each install's 200: the go
        errors = window.finish(verified_changes)           # the rest of step 2, waited for
    # closed: armed jobs that never got the go are cancelled, the lock is released

Opening takes the lock that keeps vault_bridge from starting any other update until step 2 is
over, discovers the CRDBs with an instance on the changing clusters (``GET /v1/crdbs``,
cross-checked with ``crdt_guid`` on ``GET /v1/bdbs``) and the databases of every configured
cluster, waits (bounded) for update tasks already in flight (``GET /v1/crdb_tasks``), plans step
2 and *arms* it: one thread per CRDB and per Replica Of database, each with a warm connection,
waiting for the go. A failed or timed-out task is retried, then reported naming its GUID; the
window (install 200 -> last step 2 request sent, and -> last task finished) is logged and
observed into ``vault_bridge_followup_window_seconds{cluster,stage}``.

:meth:`FollowUps.run` is step 2 on its own, from public PEMs only (a journal replay after a
crash, which must run step 2 first): it discovers, waits and locks itself. It is idempotent.

What to do is decided by :mod:`vault_bridge.decisions.followup_plan` and
:mod:`vault_bridge.decisions.followup_window`; the parts are discovery
(:mod:`~vault_bridge.rotation.followup_discovery`), the jobs
(:mod:`~vault_bridge.rotation.followup_step2`, :mod:`~vault_bridge.rotation.followup_jobs`), the
open window (:mod:`~vault_bridge.rotation.followup_window`) and the runners of step 2
(:mod:`vault_bridge.adapters.crdb_runners`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from vault_bridge.adapters.crdb_runners import DockerRunner, runner_for
from vault_bridge.adapters.ports import ClusterDatabases, CrdbRunner, Monotonic, Sleep
from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.config.schema import CrdbUpdate
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.followup_plan import (
    ClusterView,
    CrdbStep2,
    FollowUpPlan,
    Key,
    plan_crdb_updates,
)
from vault_bridge.decisions.followup_window import STAGE_FINISHED, STAGE_SENT
from vault_bridge.errors import FollowUpError, VaultBridgeError
from vault_bridge.models.certificates import CertChange
from vault_bridge.rotation.followup_discovery import Discovery
from vault_bridge.rotation.followup_jobs import CrdbLocks, FollowUpLock, Limits, Lock
from vault_bridge.rotation.followup_step2 import Step2
from vault_bridge.rotation.followup_window import HasWindow, Window

__all__ = [
    "STAGE_FINISHED",
    "STAGE_SENT",
    "FollowUpLock",
    "FollowUps",
    "HasWindow",
    "Limits",
    "Lock",
    "Step2Report",
    "Window",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step2Report:
    """What ``vault-bridge follow-up`` did."""

    steps: tuple[CrdbStep2, ...]
    errors: Mapping[str, str]  # by GUID (or cluster name when it could not be read)
    warnings: tuple[str, ...] = ()


class FollowUps:
    """The follow-up coordinator: :meth:`window` for the executor's installs, :meth:`run` for
    a replay, :meth:`run_crdb_updates` for ``vault-bridge follow-up``."""

    def __init__(
        self,
        settings: Settings,
        clusters: Mapping[str, ClusterDatabases] | None,
        *,
        clock: Monotonic = time.monotonic,
        sleep: Sleep = time.sleep,
        metrics: HasWindow | None = None,
        lock: Lock | None = None,
        limits: Limits | None = None,
        runners: Mapping[str, CrdbRunner] | None = None,
        crdb_locks: CrdbLocks | None = None,
    ) -> None:
        self.settings = settings
        self.crdb_locks = crdb_locks  # [ha]: the replicas' per-CRDB locks
        self.clock = clock
        self.sleep = sleep
        self.metrics = metrics
        self.limits = limits or Limits()
        self._lock: Lock = lock or FollowUpLock(settings.agent.state_dir)
        self._held = False
        self._clusters: Mapping[str, ClusterDatabases] | None = clusters
        self._own: dict[str, ClusterClient] = {}
        self._runners: dict[str, CrdbRunner | None] = dict(runners or {})
        self.last_windows: dict[str, dict[str, float]] = {}  # cluster -> stage -> seconds
        names = [c.name for c in settings.clusters]
        self.discovery = Discovery(names, self.client, clock=clock, sleep=sleep, limits=self.limits)
        self.step2 = Step2(
            self.client,
            self.runner,
            clock=clock,
            sleep=sleep,
            limits=self.limits,
            crdb_locks=crdb_locks,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        metrics: HasWindow | None = None,
        crdb_locks: CrdbLocks | None = None,
    ) -> FollowUps:
        """Unbound: :func:`vault_bridge.rotation.app.build` hands it the cluster clients
        (:meth:`bind`); used alone, it makes its own."""
        return cls(settings, None, metrics=metrics, crdb_locks=crdb_locks)

    def bind(self, clusters: Mapping[str, ClusterDatabases]) -> None:
        self._clusters = clusters

    def close(self) -> None:
        for client in self._own.values():
            client.close()
        self._own.clear()
        for runner in self._runners.values():
            if isinstance(runner, DockerRunner):
                runner.docker.close()

    def client(self, name: str) -> ClusterDatabases:
        if self._clusters is not None and name in self._clusters:
            return self._clusters[name]
        if name not in self._own:
            self._own[name] = ClusterClient(self.settings.cluster(name), sleep=self.sleep)
        return self._own[name]

    def runner(self, cluster: str) -> CrdbRunner | None:
        if cluster not in self._runners:
            self._runners[cluster] = runner_for(
                self.settings.cluster(cluster),
                self.client(cluster),
                timeout=self.limits.task_timeout,
                clock=self.clock,
                sleep=self.sleep,
            )
        return self._runners[cluster]

    @property
    def modes(self) -> dict[str, CrdbUpdate]:
        return {c.name: c.crdb_update for c in self.settings.clusters}

    # -- the lock ------------------------------------------------------------------------------

    def _acquire(self) -> bool:
        """Take the follow-up lock; False when this coordinator holds it already. Raises
        :class:`FollowUpError` when another follow-up keeps it past the bound."""
        if self._held:
            return False
        if not self._lock.acquire(True, self.limits.lock_wait):
            raise FollowUpError(
                f"another follow-up held the lock for {self.limits.lock_wait:g}s; not starting"
            )
        self._held = True
        return True

    def _release(self) -> None:
        self._held = False
        self._lock.release()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        took = self._acquire()
        try:
            yield
        finally:
            if took:
                self._release()

    # -- around the executor's installs ----------------------------------------------------------

    @contextlib.contextmanager
    def window(
        self, clusters: Sequence[str], changes: Sequence[CertChange] = ()
    ) -> Iterator[Window]:
        """The follow-ups of installing ``changes`` (proxy/syncer) on ``clusters``: opened
        right before the installs (lock, discovery, tasks in flight waited for, step 2 armed),
        closed after step 2. ``window.refused`` names, by cluster, why its proxy/syncer
        install must not go ahead (its CRDBs could not be listed, an update stays in flight,
        or another follow-up holds the lock)."""
        try:
            took = self._acquire()
        except FollowUpError as exc:
            reason = str(exc)
            yield self._window({}, refused={c: reason for c in clusters}, unavailable=reason)
            return
        window: Window | None = None
        try:
            window = self._open(clusters, changes)
            yield window
        finally:
            if window is not None:
                self._close(window)
            self._release_crdbs()
            if took:
                self._release()

    def _open(self, clusters: Sequence[str], changes: Sequence[CertChange]) -> Window:
        views = self.discovery.discover()
        refused = {c: f"follow-ups not ready: {views[c].error}" for c in clusters if views[c].error}
        ready = [c for c in clusters if c not in refused]
        steps, _ = plan_crdb_updates(ready, views, self.modes)
        for step, error in self._lock_crdbs(steps).items():
            for cluster in step.clusters:
                refused.setdefault(cluster, error)
        for cluster, guids in self.discovery.wait_in_flight(steps).items():
            refused[cluster] = (
                f"an update of CRDB {', '.join(guids)} is still in flight after "
                f"{self.limits.in_flight_wait:g}s; not installing in between"
            )
        window = self._window(views, refused=refused)
        armed = [c for c in changes if c.cluster in ready and c.cluster not in refused]
        if armed:
            try:
                window.arm(armed, self.limits.warm_wait)
            except BaseException:
                window.close()
                raise
        return window

    def _window(
        self,
        views: Mapping[str, ClusterView],
        *,
        refused: Mapping[str, str],
        unavailable: str | None = None,
    ) -> Window:
        return Window(
            self.step2,
            views,
            self.modes,
            clock=self.clock,
            metrics=self.metrics,
            refused=refused,
            unavailable=unavailable,
        )

    def _close(self, window: Window) -> None:
        window.close()
        if window.windows is not None:
            self.last_windows = window.windows

    # -- step 2 on its own -----------------------------------------------------------------------

    def run(self, changes: Sequence[CertChange]) -> dict[Key, str]:
        """Step 2 for ``changes`` installed earlier (every cluster at once); an error by
        (cluster, name) for each follow-up that failed. Safe to run again for the same
        changes."""
        if not changes:
            return {}
        try:
            with self._locked():
                views = self.discovery.for_changes(changes, self.modes)
                locked = self._locked_out(changes, views)
                window = self._window(views, refused={})
                try:
                    rest = [c for c in changes if (c.cluster, c.name) not in locked]
                    return {**window.finish(rest), **locked}
                finally:
                    self._close(window)
                    self._release_crdbs()
        except VaultBridgeError as exc:
            return {(c.cluster, c.name): str(exc) for c in changes}

    # -- [ha]: the replicas' CRDB locks -------------------------------------------------------

    def _lock_crdbs(self, steps: Sequence[CrdbStep2]) -> dict[CrdbStep2, str]:
        """Take the lock of every CRDB of ``steps`` (before step 1 on any of its clusters);
        the steps whose lock another replica keeps, with why."""
        if self.crdb_locks is None or not steps:
            return {}
        failed = self.crdb_locks.acquire_crdbs([s.guid for s in steps])
        return {s: failed[s.guid] for s in steps if s.guid in failed}

    def _locked_out(
        self, changes: Sequence[CertChange], views: Mapping[str, ClusterView]
    ) -> dict[Key, str]:
        """Step 2 on its own: the changes whose CRDB lock another replica keeps (the journal
        retries them), with why; the other locks are taken."""
        clusters = sorted(
            {c.cluster for c in changes if c.cluster in views and not views[c.cluster].error}
        )
        steps, _ = plan_crdb_updates(clusters, views, self.modes)
        locked = self._lock_crdbs(steps)
        return {
            (c.cluster, c.name): error
            for step, error in locked.items()
            for c in changes
            if c.cluster in step.clusters
        }

    def _release_crdbs(self) -> None:
        if self.crdb_locks is not None:
            self.crdb_locks.release_crdbs()

    # -- `vault-bridge follow-up` ---------------------------------------------------------------

    def run_crdb_updates(self, cluster_names: Sequence[str] | None = None) -> Step2Report:
        """Step 2 alone for every CRDB with an instance on ``cluster_names`` (default: every
        configured cluster), for a certificate installed some other way. Errors are by GUID;
        a cluster that cannot be read is reported under its name."""
        names = list(cluster_names or [c.name for c in self.settings.clusters])
        for name in names:
            self.settings.cluster(name)  # a ConfigError for an unknown one
        with self._locked():
            views = {name: self.discovery.view(name) for name in names}
            errors = {n: f"cannot read cluster {n}: {v.error}" for n, v in views.items() if v.error}
            readable = [n for n in names if not views[n].error]
            steps, warnings = plan_crdb_updates(readable, views, self.modes)
            for warning in warnings:
                logger.warning("%s", warning)
            busy = self.discovery.wait_in_flight(steps)
            if busy:
                logger.warning("update tasks still in flight; running step 2 anyway: %s", busy)
            jobs = self.step2.jobs(FollowUpPlan(crdb_updates=tuple(steps)), [])
            self.step2.launch(jobs, fire=True)
            self.step2.join(jobs)
            for step, job in zip(steps, jobs, strict=True):
                if job.error is not None:
                    errors[step.guid] = job.error
        return Step2Report(tuple(steps), errors, tuple(warnings))
