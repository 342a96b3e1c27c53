"""Step 2's jobs, made from a plan and run on threads of their own: ``crdb update --force`` per
CRDB through the cluster's runner (retried), and the Replica Of database updates."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

from vault_bridge.adapters.ports import ClusterDatabases, CrdbRunner, Monotonic, Sleep
from vault_bridge.decisions.followup_plan import CrdbStep2, FollowUpPlan
from vault_bridge.errors import FollowUpError, VaultBridgeError
from vault_bridge.models.certificates import CertChange
from vault_bridge.rotation.followup_jobs import CrdbLocks, Job, Limits, join, start
from vault_bridge.rotation.replica_of import ReplicaOf

logger = logging.getLogger(__name__)


class Step2:
    """Makes the jobs of a plan and runs them."""

    def __init__(
        self,
        client: Callable[[str], ClusterDatabases],
        runner: Callable[[str], CrdbRunner | None],
        *,
        clock: Monotonic,
        sleep: Sleep,
        limits: Limits,
        crdb_locks: CrdbLocks | None = None,
    ) -> None:
        self.client = client
        self.crdb_locks = crdb_locks
        self.runner = runner
        self.clock = clock
        self.sleep = sleep
        self.limits = limits
        self.replica_of = ReplicaOf(client, clock=clock, sleep=sleep, limits=limits)

    # -- making the jobs -------------------------------------------------------------------

    def jobs(self, plan: FollowUpPlan, changes: Sequence[CertChange]) -> list[Job]:
        """One job per CRDB update and per database update of ``plan``."""
        jobs = [self._crdb_job(step, changes) for step in plan.crdb_updates]
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

    def _crdb_job(self, step: CrdbStep2, changes: Sequence[CertChange]) -> Job:
        keys = tuple((c.cluster, c.name) for c in changes if c.cluster in step.clusters)
        runner = self.runner(step.via)
        return Job(
            "crdb",
            f"CRDB {step.guid} ({step.name})",
            tuple(sorted(set(step.clusters))),
            keys,
            functools.partial(self._crdb, step=step),
            warm=functools.partial(runner.warm, step.guid) if runner else None,
            targets=(step.via,) if runner and runner.kind == "rest" else (),
            guid=step.guid,
        )

    # -- running them ------------------------------------------------------------------------

    def launch(self, jobs: Sequence[Job], *, fire: bool) -> None:
        """Start a thread per job, with enough pooled connections per cluster for all of them
        to go at once; ``fire``: they go as soon as they are warm, else they wait armed."""
        if fire:
            for job in jobs:
                job.fire()
        per_cluster: dict[str, int] = {}
        for job in jobs:
            for cluster in job.targets:
                per_cluster[cluster] = per_cluster.get(cluster, 0) + 1
        for cluster, count in per_cluster.items():
            self.client(cluster).reserve_connections(count + 2)
        start(jobs, self._do, wait=self.limits.lock_wait)

    def join(self, jobs: Sequence[Job]) -> None:
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
