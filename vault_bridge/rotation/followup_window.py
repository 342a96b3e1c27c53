"""The open window of one pass's follow-ups: :class:`Window`, from before the installs to the
end of step 2.

Only :meth:`vault_bridge.rotation.followups.FollowUps.window` opens one (lock taken, clusters
read, step 2 armed) and it closes it (armed jobs that never got the go cancelled, lock
released), so its two calls can only come in order and inside it: :meth:`Window.installed` at
each install's 200, then once :meth:`Window.finish` with the changes installed and verified.
What goes, what is cancelled and what is planned again is decided by
:mod:`vault_bridge.decisions.followup_window`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from vault_bridge.adapters.ports import Monotonic
from vault_bridge.config.schema import CrdbUpdate
from vault_bridge.decisions.followup_plan import ClusterView, FollowUpPlan, Key, plan_followups
from vault_bridge.decisions.followup_window import change_errors, settle, window_seconds
from vault_bridge.errors import FollowUpError, VaultBridgeError
from vault_bridge.models.certificates import CertChange
from vault_bridge.rotation.followup_jobs import Job
from vault_bridge.rotation.followup_step2 import Step2

logger = logging.getLogger(__name__)


class WindowHistogram(Protocol):
    def labels(self, *, cluster: str, stage: str) -> Any: ...


class HasWindow(Protocol):
    """What :class:`vault_bridge.agent.health.Metrics` offers the follow-ups."""

    @property
    def followup_window(self) -> WindowHistogram: ...


class Window:
    """Step 2 of one pass: armed before the installs, fired at their 200s, finished once."""

    def __init__(
        self,
        step2: Step2,
        views: Mapping[str, ClusterView],
        modes: Mapping[str, CrdbUpdate],
        *,
        clock: Monotonic,
        metrics: HasWindow | None = None,
        refused: Mapping[str, str] | None = None,
        unavailable: str | None = None,
    ) -> None:
        self._step2 = step2
        self._views = views
        self._modes = modes
        self._clock = clock
        self._metrics = metrics
        # by cluster: why its proxy/syncer install must not go ahead (its CRDBs could not be
        # listed, an update stays in flight, or the lock was not to be had)
        self.refused: dict[str, str] = dict(refused or {})
        self._unavailable = unavailable
        self.windows: dict[str, dict[str, float]] | None = None  # by cluster, once finished
        self._armed: tuple[CertChange, ...] = ()
        self._plan: FollowUpPlan | None = None
        self._jobs: list[Job] = []
        self._step1: dict[str, float] = {}  # cluster -> install 200 (clock)
        self._installed: set[Key] = set()
        self._state = "open"  # -> "finished" -> "closed"

    # -- before step 1 (FollowUps.window) ------------------------------------------------------

    def arm(self, changes: Sequence[CertChange], warm_wait: float) -> None:
        """Plan step 2 for the ``changes`` about to be installed and arm it: one thread per
        job, each warming its connection, waiting for the go. Returns once every job is warm
        (at most ``warm_wait`` s)."""
        self._armed = tuple(changes)
        self._plan = plan_followups(changes, self._views, self._modes)
        self._jobs = self._step2.jobs(self._plan, changes)
        self._step2.launch(self._jobs, fire=False)
        deadline = self._clock() + warm_wait
        for job in self._jobs:  # step 1 waits until every job is armed (bounded)
            job.warmed.wait(max(0.0, deadline - self._clock()))

    # -- the caller's two calls ----------------------------------------------------------------

    def installed(self, cluster: str, names: Sequence[str]) -> None:
        """Step 1 answered 200 on ``cluster`` for ``names``: its window starts, and every
        armed job that has what it needs installed now goes."""
        self._check("open", "installed")
        if not names:
            return
        self._step1.setdefault(cluster, self._clock())
        self._installed.update((cluster, name) for name in names)
        for job in self._jobs:
            if not job.go.is_set() and job.ready(self._installed):
                job.fire()

    def finish(self, changes: Sequence[CertChange]) -> dict[Key, str]:
        """Step 2 for the installed and verified ``changes`` (every cluster at once): the go
        to the armed jobs they need, the others cancelled, what no armed job covers planned
        and run now; waits for every job. An error by (cluster, name) for each change whose
        follow-ups failed."""
        self._check("open", "finish")
        self._state = "finished"
        if not changes:
            return {}
        if self._unavailable is not None:  # no lock: step 2 must not run in this window
            return {(c.cluster, c.name): self._unavailable for c in changes}
        try:
            return self._run(changes)
        except VaultBridgeError as exc:
            return {(c.cluster, c.name): str(exc) for c in changes}

    def _run(self, changes: Sequence[CertChange]) -> dict[Key, str]:
        verified = [(c.cluster, c.name) for c in changes]
        jobs: list[Job] = []
        plans: list[FollowUpPlan] = []
        covered_guids: frozenset[str] = frozenset()
        rest = list(changes)
        if self._plan is not None:
            armed = [(c.cluster, c.name) for c in self._armed]
            settlement = settle([j.armed() for j in self._jobs], armed, verified)
            for index in settlement.fire:
                self._jobs[index].fire()
            for index in settlement.cancel:
                self._jobs[index].cancel()
            for job, keys in zip(self._jobs, settlement.keys, strict=True):
                job.keys = keys
            jobs.extend(self._jobs)
            plans.append(self._plan)
            covered_guids = settlement.covered_guids
            replan = set(settlement.replan)
            rest = [c for c in changes if (c.cluster, c.name) in replan]
        if rest:
            plan = plan_followups(rest, self._views, self._modes)
            more = [
                j
                for j in self._step2.jobs(plan, rest)
                if j.kind != "crdb" or j.guid not in covered_guids
            ]
            self._step2.launch(more, fire=True)
            jobs.extend(more)
            plans.append(plan)
        for plan in plans:
            for warning in plan.warnings:
                logger.warning("%s", warning)
        self._step2.join(jobs)
        ran = [j for j in jobs if not j.cancelled]
        errors = change_errors(
            [p.errors for p in plans],
            [(j.keys, j.error) for j in ran if j.error is not None],
            set(verified),
        )
        self.windows = report(ran, changes, self._step1, self._metrics)
        return errors

    # -- after (FollowUps.window) -------------------------------------------------------------

    def close(self) -> None:
        """Cancel and join the armed jobs that never got the go. Idempotent."""
        self._state = "closed"
        for job in self._jobs:
            job.cancel()
        self._step2.join(self._jobs)

    def _check(self, wanted: str, call: str) -> None:
        if self._state != wanted:
            raise FollowUpError(f"follow-up window {self._state}: {call}() comes too late")


def report(
    jobs: Sequence[Job],
    changes: Sequence[CertChange],
    step1: Mapping[str, float],
    metrics: HasWindow | None,
) -> dict[str, dict[str, float]]:
    """Log each changed cluster's follow-ups and window, and observe the window into
    ``vault_bridge_followup_window_seconds{cluster,stage}``; returns the windows by cluster."""
    windows: dict[str, dict[str, float]] = {}
    for cluster in sorted({c.cluster for c in changes}):
        mine = [j for j in jobs if cluster in j.clusters]
        names = ",".join(sorted({c.name for c in changes if c.cluster == cluster}))
        crdbs = sum(1 for j in mine if j.kind == "crdb")
        start = step1.get(cluster)
        window = window_seconds(
            start if mine else None,
            [j.sent for j in mine if j.sent is not None],
            [j.done for j in mine if j.done is not None],
        )
        replicas = len(mine) - crdbs
        what = f"follow-ups of {names} on {cluster}: {crdbs} CRDB(s), {replicas} replica update(s)"
        if window is None:
            earlier = "" if start is not None else " (step 1 happened earlier)"
            logger.info("%s%s", what, earlier, extra={"cluster": cluster})
            continue
        windows[cluster] = window
        failed = sum(1 for j in mine if j.error)
        logger.info(
            "%s; window from the install's 200: %.1f ms to the last step 2 request sent, "
            "%.1f ms to the last finished%s",
            what,
            window["request_sent"] * 1000,
            window["finished"] * 1000,
            f" ({failed} failed)" if failed else "",
            extra={"cluster": cluster},
        )
        if metrics is not None:
            for stage, seconds in window.items():
                metrics.followup_window.labels(cluster=cluster, stage=stage).observe(seconds)
    return windows
