"""The Active-Active and Replica Of follow-ups of a ``proxy`` or ``syncer`` change, at once.

After step 1 (the install) the cluster rejects connections that use the old certificate, so
every affected CRDB and replica is broken until step 2 ran. :class:`FollowUps` keeps that
window as short as possible:

- :meth:`FollowUps.prepare`, called by the executor right before the installs, takes the lock
  that keeps vault_bridge from starting any other update until step 2 is over, discovers the
  CRDBs with an instance on the changing clusters (``GET /v1/crdbs``, cross-checked with
  ``crdt_guid`` on ``GET /v1/bdbs``) and the databases of every configured cluster, waits
  (bounded) for update tasks already in flight (``GET /v1/crdb_tasks``), plans step 2 and
  *arms* it: one thread per CRDB and per Replica Of database, each with a warm connection,
  waiting for the go;
- :meth:`FollowUps.installed`, called when an install answered 200, gives the go to every job
  whose changing clusters are all installed now (the documented multi-cluster form: install on
  each participating cluster, then one update per CRDB);
- :meth:`FollowUps.run` (after the executor verified the installs and journaled them) gives
  the go to what is left, cancels what belongs to an install that failed, waits for every task
  to finish (a failed or timed-out task is retried, then reported naming its GUID) and reports
  the window: install 200 -> last step 2 request sent, and -> last task finished (logged, and
  observed into ``vault_bridge_followup_window_seconds{cluster,stage}``).

:meth:`run` also works on its own, from public PEMs only (a journal replay after a crash, which
must run step 2 first): it then discovers, waits and locks itself. It is idempotent.

What to do is decided by :func:`vault_bridge.decisions.followup_plan.plan_followups`; the runners of step 2
are in :mod:`vault_bridge.adapters.crdb_runners`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from vault_bridge.adapters.crdb_runners import CrdbRunner, DockerRunner, runner_for
from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.config.schema import CrdbUpdate, Settings
from vault_bridge.decisions.followup_plan import (
    ClusterView,
    CrdbStep2,
    FollowUpPlan,
    Key,
    plan_crdb_updates,
    plan_followups,
)
from vault_bridge.errors import FollowUpError, VaultBridgeError
from vault_bridge.models.certificates import CertChange
from vault_bridge.rotation.followup_jobs import (
    CrdbLocks,
    FollowUpLock,
    Job,
    Limits,
    Lock,
    join,
    start,
)
from vault_bridge.rotation.replica_of import ReplicaOf

__all__ = ["FollowUpLock", "FollowUps", "Limits", "Lock", "Step2Report"]

logger = logging.getLogger(__name__)

STAGE_SENT = "request_sent"
STAGE_FINISHED = "finished"


class WindowHistogram(Protocol):
    def labels(self, *, cluster: str, stage: str) -> Any: ...


class HasWindow(Protocol):
    """What :class:`vault_bridge.agent.health.Metrics` offers the follow-ups."""

    @property
    def followup_window(self) -> WindowHistogram: ...


@dataclass(frozen=True)
class Step2Report:
    """What ``vault-bridge follow-up`` did."""

    steps: tuple[CrdbStep2, ...]
    errors: Mapping[str, str]  # by GUID (or cluster name when it could not be read)
    warnings: tuple[str, ...] = ()


@dataclass
class _Prepared:
    views: dict[str, ClusterView]
    clusters: tuple[str, ...]
    changes: tuple[CertChange, ...] = ()
    plan: FollowUpPlan | None = None
    jobs: list[Job] = field(default_factory=list)
    step1: dict[str, float] = field(default_factory=dict)  # cluster -> install 200 (clock)
    installed: set[Key] = field(default_factory=set)


class FollowUps:
    """Implements the Rotator's follow-up runner (``prepare`` / ``installed`` / ``run`` /
    ``release``) and ``vault-bridge follow-up`` (:meth:`run_crdb_updates`)."""

    def __init__(
        self,
        settings: Settings,
        clusters: Mapping[str, ClusterClient] | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
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
        self._clusters: Mapping[str, ClusterClient] | None = clusters
        self._own: dict[str, ClusterClient] = {}
        self._runners: dict[str, CrdbRunner | None] = dict(runners or {})
        self._prepared: _Prepared | None = None
        self._held = False
        self.last_windows: dict[str, dict[str, float]] = {}  # cluster -> stage -> seconds
        self.replica_of = ReplicaOf(self.client, clock=clock, sleep=sleep, limits=self.limits)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        metrics: HasWindow | None = None,
        crdb_locks: CrdbLocks | None = None,
    ) -> FollowUps:
        """Unbound: :func:`vault_bridge.rotation.app.build` hands it the cluster clients (:meth:`bind`);
        used alone, it makes its own."""
        return cls(settings, None, metrics=metrics, crdb_locks=crdb_locks)

    def bind(self, clusters: Mapping[str, ClusterClient]) -> None:
        self._clusters = clusters

    def close(self) -> None:
        for client in self._own.values():
            client.close()
        self._own.clear()
        for runner in self._runners.values():
            if isinstance(runner, DockerRunner):
                runner.docker.close()

    def client(self, name: str) -> ClusterClient:
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

    def _acquire(self) -> None:
        if self._held:
            return
        if not self._lock.acquire(True, self.limits.lock_wait):
            raise FollowUpError(
                f"another follow-up held the lock for {self.limits.lock_wait:g}s; not starting"
            )
        self._held = True

    def release(self) -> None:
        """End of the window: cancels armed jobs that never got the go, lets the next update
        start. Idempotent."""
        self._abandon()
        if self.crdb_locks is not None:
            self.crdb_locks.release_crdbs()
        if self._held:
            self._held = False
            self._lock.release()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._acquire()
        try:
            yield
        finally:
            self.release()

    # -- before step 1 ---------------------------------------------------------------------------

    def prepare(
        self, clusters: Sequence[str], changes: Sequence[CertChange] = ()
    ) -> dict[str, str]:
        """Right before installing ``proxy``/``syncer`` on ``clusters``: take the lock,
        discover, wait for update tasks in flight (bounded) and, given the ``changes`` about to
        be installed, arm step 2. Returns, by cluster, why its install must not go ahead (its
        CRDBs could not be listed, or an update stays in flight)."""
        self._abandon()
        try:
            self._acquire()
        except FollowUpError as exc:
            return {c: str(exc) for c in clusters}
        views = self.discover()
        errors = {c: f"follow-ups not ready: {views[c].error}" for c in clusters if views[c].error}
        ready = [c for c in clusters if c not in errors]
        steps, _ = plan_crdb_updates(ready, views, self.modes)
        for step, error in self._lock_crdbs(steps).items():
            for cluster in step.clusters:
                errors.setdefault(cluster, error)
        ready = [c for c in ready if c not in errors]
        busy = self._wait_in_flight(steps, views)
        for cluster, guids in busy.items():
            errors[cluster] = (
                f"an update of CRDB {', '.join(guids)} is still in flight after "
                f"{self.limits.in_flight_wait:g}s; not installing in between"
            )
        prepared = _Prepared(views, tuple(clusters))
        armed = [c for c in changes if c.cluster in ready and c.cluster not in errors]
        if armed:
            prepared.changes = tuple(armed)
            prepared.plan = plan_followups(armed, views, self.modes)
            prepared.jobs = self._jobs(prepared.plan, armed)
            self._reserve(prepared.jobs)
            self._start(prepared.jobs)
            deadline = self.clock() + self.limits.warm_wait
            for job in prepared.jobs:  # step 1 waits until every job is armed (bounded)
                job.warmed.wait(max(0.0, deadline - self.clock()))
        self._prepared = prepared
        return errors

    def installed(self, cluster: str, names: Sequence[str]) -> None:
        """Step 1 answered 200 on ``cluster`` for ``names``: its window starts, and every
        armed job that has what it needs installed now goes."""
        prepared = self._prepared
        if prepared is None or not names:
            return
        prepared.step1.setdefault(cluster, self.clock())
        prepared.installed.update((cluster, name) for name in names)
        for job in prepared.jobs:
            if not job.go.is_set() and job.ready(prepared.installed):
                job.fire()

    def _abandon(self) -> None:
        """Cancel and join armed jobs of a preparation nobody ran (never fired)."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            for job in prepared.jobs:
                job.cancel()
            self._join(prepared.jobs)

    def discover(self) -> dict[str, ClusterView]:
        """Every configured cluster's CRDBs, databases and proxy/syncer certificates, read at
        once (one thread per cluster)."""
        names = [c.name for c in self.settings.clusters]
        with ThreadPoolExecutor(
            max_workers=len(names), thread_name_prefix="followup-discover"
        ) as pool:
            return dict(zip(names, pool.map(self._view, names), strict=True))

    def _view(self, name: str) -> ClusterView:
        client = self.client(name)
        try:
            crdbs = tuple(client.crdbs())
            bdbs = tuple(client.bdbs())
            certs = client.certificates()
        except VaultBridgeError as exc:
            logger.warning("follow-ups: cannot read cluster %s: %s", name, exc)
            return ClusterView(name, error=str(exc))
        proxy, syncer = certs.get("proxy"), certs.get("syncer")
        return ClusterView(
            name,
            crdbs,
            bdbs,
            proxy.pem if proxy else None,
            syncer.pem if syncer else None,
        )

    def _wait_in_flight(
        self, steps: Sequence[CrdbStep2], views: Mapping[str, ClusterView]
    ) -> dict[str, list[str]]:
        """Wait until no update task of these CRDBs is queued or started; returns, by cluster,
        the GUIDs still busy after the bound."""
        guids = {s.guid for s in steps}
        clusters = sorted({c for s in steps for c in s.clusters})
        deadline = self.clock() + self.limits.in_flight_wait
        logged = False
        while True:
            busy: dict[str, list[str]] = {}
            for cluster in clusters:
                try:
                    tasks = self.client(cluster).crdb_tasks()
                except VaultBridgeError as exc:
                    busy.setdefault(cluster, []).append(f"(tasks unreadable: {exc})")
                    continue
                for task in tasks:
                    if task.crdb_guid in guids and not task.done:
                        busy.setdefault(cluster, []).append(task.crdb_guid)
            if not busy or self.clock() >= deadline:
                return busy
            if not logged:
                logger.info(
                    "waiting for update tasks in flight before installing: %s",
                    ", ".join(sorted({g for gs in busy.values() for g in gs})),
                )
                logged = True
            self.sleep(self.limits.poll)

    # -- step 2 -------------------------------------------------------------------------------

    def run(self, changes: Sequence[CertChange]) -> dict[tuple[str, str], str]:
        """Step 2 for ``changes`` (every cluster at once); an error by (cluster, name) for each
        follow-up that failed. Safe to run again for the same changes."""
        prepared, self._prepared = self._prepared, None
        if not changes:
            if prepared is not None:
                self._prepared = prepared
            self.release()
            return {}
        keys = {(c.cluster, c.name) for c in changes}
        try:
            self._acquire()
            jobs: list[Job] = []
            plans: list[FollowUpPlan] = []
            done_guids: set[str] = set()
            if prepared is not None and prepared.plan is not None:
                # Armed in prepare: give the go to what the installed changes need; a database
                # update that also carries a change that did not make it is planned again
                # below without it.
                covered = {(c.cluster, c.name) for c in prepared.changes}
                for job in prepared.jobs:
                    if not job.go.is_set():
                        if job.wanted(keys):
                            job.fire()
                        else:
                            job.cancel()
                            if job.kind != "crdb":
                                covered -= set(job.planned_keys)
                    job.keys = tuple(k for k in job.planned_keys if k in keys)
                    if job.kind == "crdb" and not job.cancelled:
                        done_guids.add(job.what)
                jobs.extend(prepared.jobs)
                plans.append(prepared.plan)
                rest = [c for c in changes if (c.cluster, c.name) not in covered]
            else:
                rest = list(changes)
            lock_errors: dict[tuple[str, str], str] = {}
            if rest:
                views = prepared.views if prepared is not None else self._discover_for(rest)
                plan = plan_followups(rest, views, self.modes)
                plan, lock_errors = self._without_locked(plan, rest, done_guids)
                more = [
                    j
                    for j in self._jobs(plan, rest)
                    if j.kind != "crdb" or j.what not in done_guids
                ]
                for job in more:
                    job.fire()
                self._reserve(more)
                self._start(more)
                jobs.extend(more)
                plans.append(plan)
            for plan in plans:
                for warning in plan.warnings:
                    logger.warning("%s", warning)
            self._join(jobs)
            errors: dict[tuple[str, str], str] = {
                k: v for plan in plans for k, v in plan.errors.items() if k in keys
            }
            errors.update(lock_errors)
            for job in jobs:
                if job.error is not None and not job.cancelled:
                    for key in job.keys:
                        errors[key] = f"{errors[key]}; {job.error}" if key in errors else job.error
            self._report(
                [j for j in jobs if not j.cancelled],
                changes,
                prepared.step1 if prepared else {},
            )
            return errors
        except VaultBridgeError as exc:
            return {(c.cluster, c.name): str(exc) for c in changes}
        finally:
            self.release()

    def _discover_for(self, changes: Sequence[CertChange]) -> dict[str, ClusterView]:
        """Discovery when step 1 happened elsewhere (a replay, the CLI): step 2 goes at once,
        after any update already in flight (bounded)."""
        views = self.discover()
        changed = [c for c in views if any(ch.cluster == c for ch in changes)]
        steps, _ = plan_crdb_updates([c for c in changed if not views[c].error], views, self.modes)
        busy = self._wait_in_flight(steps, views)
        if busy:
            logger.warning(
                "update tasks still in flight after %gs; running step 2 anyway: %s",
                self.limits.in_flight_wait,
                busy,
            )
        return views

    # -- [ha]: the replicas' CRDB locks -------------------------------------------------------

    def _lock_crdbs(self, steps: Sequence[CrdbStep2]) -> dict[CrdbStep2, str]:
        """Take the lock of every CRDB of ``steps``; the steps whose lock another replica
        keeps, with why."""
        if self.crdb_locks is None or not steps:
            return {}
        failed = self.crdb_locks.acquire_crdbs([s.guid for s in steps])
        return {s: failed[s.guid] for s in steps if s.guid in failed}

    def _without_locked(
        self, plan: FollowUpPlan, changes: Sequence[CertChange], done: set[str]
    ) -> tuple[FollowUpPlan, dict[tuple[str, str], str]]:
        """``plan`` without the CRDB updates whose lock could not be had, and the error of
        each change they carried (the journal retries them)."""
        steps = [s for s in plan.crdb_updates if f"CRDB {s.guid} ({s.name})" not in done]
        locked = self._lock_crdbs(steps)
        if not locked:
            return plan, {}
        errors = {
            (c.cluster, c.name): error
            for step, error in locked.items()
            for c in changes
            if c.cluster in step.clusters
        }
        kept = tuple(s for s in plan.crdb_updates if s not in locked)
        return dataclasses.replace(plan, crdb_updates=kept), errors

    # -- the jobs' threads --------------------------------------------------------------------

    def _reserve(self, jobs: Sequence[Job]) -> None:
        """Enough pooled connections per cluster for its jobs to go at once."""
        per_cluster: dict[str, int] = {}
        for job in jobs:
            for cluster in job.targets:
                per_cluster[cluster] = per_cluster.get(cluster, 0) + 1
        for cluster, count in per_cluster.items():
            self.client(cluster).reserve_connections(count + 2)

    def _start(self, jobs: Sequence[Job]) -> None:
        start(jobs, self._do, wait=self.limits.lock_wait)

    def _join(self, jobs: Sequence[Job]) -> None:
        join(jobs)

    def _do(self, job: Job) -> None:
        try:
            job.action(job)
        except VaultBridgeError as exc:
            job.error = str(exc)
            logger.error("follow-up %s failed: %s", job.what, exc)
        except Exception as exc:  # a bug must not leave the other jobs' results unreported
            job.error = f"{type(exc).__name__}: {exc}"
            logger.exception("follow-up %s failed", job.what)
        if job.done is None:
            job.done = self.clock()

    def _jobs(self, plan: FollowUpPlan, changes: Sequence[CertChange]) -> list[Job]:
        jobs: list[Job] = []
        for step in plan.crdb_updates:
            keys = tuple((c.cluster, c.name) for c in changes if c.cluster in step.clusters)
            runner = self.runner(step.via)
            jobs.append(
                Job(
                    "crdb",
                    f"CRDB {step.guid} ({step.name})",
                    tuple(sorted(set(step.clusters))),
                    keys,
                    functools.partial(self._crdb, step=step),
                    warm=functools.partial(runner.warm, step.guid) if runner else None,
                    targets=(step.via,) if runner and runner.kind == "rest" else (),
                )
            )
        for update in plan.server_cert_updates:
            jobs.append(
                Job(
                    "replica",
                    f"replica {update.name} (uid {update.uid}) on {update.cluster}",
                    tuple(sorted({c for c, _ in update.causes})),
                    update.causes,
                    functools.partial(self.replica_of.set_server_cert, update=update),
                    warm=functools.partial(self.client(update.cluster).bdb, update.uid),
                    targets=(update.cluster,),
                )
            )
        for client_update in plan.client_cert_updates:
            jobs.append(
                Job(
                    "client-cert",
                    f"source {client_update.name} (uid {client_update.uid}) on "
                    f"{client_update.cluster}",
                    (client_update.cause[0],),
                    (client_update.cause,),
                    functools.partial(self.replica_of.swap_client_cert, update=client_update),
                    warm=functools.partial(
                        self.client(client_update.cluster).bdb, client_update.uid
                    ),
                    targets=(client_update.cluster,),
                )
            )
        return jobs

    def _crdb(self, job: Job, step: CrdbStep2) -> None:
        runner = self.runner(step.via)
        if runner is None:  # planned only through clusters with a runner
            raise FollowUpError(f"no runner for cluster {step.via}")
        last: VaultBridgeError | None = None
        for attempt in range(1, self.limits.attempts + 1):
            if self.crdb_locks is not None:
                self.crdb_locks.prove_crdb(step.guid)  # raises: nothing is sent
            try:
                result = runner.update(step.guid, on_sent=lambda: job.mark_sent(self.clock()))
            except VaultBridgeError as exc:
                last = exc
                if attempt < self.limits.attempts:
                    logger.warning(
                        "CRDB %s (%s): step 2 attempt %d of %d failed (%s); retrying",
                        step.guid,
                        step.name,
                        attempt,
                        self.limits.attempts,
                        exc,
                    )
                    self.sleep(self.limits.retry_delay)
                continue
            job.done = self.clock()
            logger.info(
                "CRDB %s (%s): step 2 finished through %s (%s, task %s)",
                step.guid,
                step.name,
                step.via,
                runner.kind,
                result.task_id,
                extra={"cluster": step.via},
            )
            return
        raise FollowUpError(
            f"CRDB {step.guid} ({step.name}): `crdb update --force` failed "
            f"{self.limits.attempts} times through {step.via} ({runner.kind}): {last}"
        )

    # -- the window ---------------------------------------------------------------------------

    def _report(
        self, jobs: Sequence[Job], changes: Sequence[CertChange], step1: Mapping[str, float]
    ) -> None:
        clusters = sorted({c.cluster for c in changes})
        self.last_windows = {}
        for cluster in clusters:
            mine = [j for j in jobs if cluster in j.clusters]
            names = ",".join(sorted({c.name for c in changes if c.cluster == cluster}))
            crdbs = sum(1 for j in mine if j.kind == "crdb")
            replicas = len(mine) - crdbs
            start = step1.get(cluster)
            sent = [j.sent for j in mine if j.sent is not None]
            done = [j.done for j in mine if j.done is not None]
            if start is None or not mine or not sent:  # nothing sent (no proof of a lock)
                logger.info(
                    "follow-ups of %s on %s: %d CRDB(s), %d replica update(s)%s",
                    names,
                    cluster,
                    crdbs,
                    replicas,
                    "" if start is not None else " (step 1 happened earlier)",
                    extra={"cluster": cluster},
                )
                continue
            window = {STAGE_SENT: max(sent) - start, STAGE_FINISHED: max(done) - start}
            self.last_windows[cluster] = window
            failed = sum(1 for j in mine if j.error)
            logger.info(
                "follow-ups of %s on %s: %d CRDB(s), %d replica update(s); window from the "
                "install's 200: %.1f ms to the last step 2 request sent, %.1f ms to the last "
                "finished%s",
                names,
                cluster,
                crdbs,
                replicas,
                window[STAGE_SENT] * 1000,
                window[STAGE_FINISHED] * 1000,
                f" ({failed} failed)" if failed else "",
                extra={"cluster": cluster},
            )
            if self.metrics is not None:
                for stage, seconds in window.items():
                    self.metrics.followup_window.labels(cluster=cluster, stage=stage).observe(
                        seconds
                    )

    # -- `vault-bridge follow-up` ---------------------------------------------------------------

    def run_crdb_updates(self, cluster_names: Sequence[str] | None = None) -> Step2Report:
        """Step 2 alone for every CRDB with an instance on ``cluster_names`` (default: every
        configured cluster), for a certificate installed some other way. Errors are by GUID;
        a cluster that cannot be read is reported under its name."""
        names = list(cluster_names or [c.name for c in self.settings.clusters])
        for name in names:
            self.settings.cluster(name)  # a ConfigError for an unknown one
        with self._locked():
            views = {name: self._view(name) for name in names}
            errors = {n: f"cannot read cluster {n}: {v.error}" for n, v in views.items() if v.error}
            readable = [n for n in names if not views[n].error]
            steps, warnings = plan_crdb_updates(readable, views, self.modes)
            for warning in warnings:
                logger.warning("%s", warning)
            busy = self._wait_in_flight(steps, views)
            if busy:
                logger.warning("update tasks still in flight; running step 2 anyway: %s", busy)
            jobs = self._jobs(FollowUpPlan(crdb_updates=tuple(steps)), [])
            for job in jobs:
                job.fire()
            self._reserve(jobs)
            self._start(jobs)
            self._join(jobs)
            for step, job in zip(steps, jobs, strict=True):
                if job.error is not None:
                    errors[step.guid] = job.error
        return Step2Report(tuple(steps), errors, tuple(warnings))
