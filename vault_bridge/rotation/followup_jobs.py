"""The follow-ups' moving parts: their bounds, the lock held from step 1 to the end of step 2,
and the jobs of step 2, each armed on a thread of its own and fired at the install's 200."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vault_bridge.adapters.file_lock import flock_within, unlock
from vault_bridge.decisions.followup_plan import Key
from vault_bridge.decisions.followup_window import ArmedStep, StepKind, may_go
from vault_bridge.errors import VaultBridgeError

logger = logging.getLogger(__name__)

LOCK_FILE = "followup.lock"


@dataclass(frozen=True)
class Limits:
    """Every bound of the follow-ups (the configuration has no keys for them yet)."""

    in_flight_wait: float = 120.0  # an update task already running before step 1
    task_timeout: float = 300.0  # one step 2 task, from the request to finished
    attempts: int = 3  # step 2 tries per CRDB (a failed task or a timeout is retried)
    retry_delay: float = 1.0
    in_sync_wait: float = 120.0  # a replica reporting in-sync before the old syncer cert goes
    lock_wait: float = 300.0
    poll: float = 0.05  # in-flight tasks and replica status
    warm_wait: float = 5.0  # armed jobs opening their connections, before step 1


class Lock(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class CrdbLocks(Protocol):
    """High availability: a lock per CRDB shared by the replicas (``vault_bridge.agent.ha``),
    taken before step 1 on any of its clusters and released after its step 2."""

    def acquire_crdbs(self, guids: Sequence[str]) -> dict[str, str]:
        """Take the locks (waiting, bounded); returns, by GUID, why one could not be had."""
        ...

    def prove_crdb(self, guid: str) -> None:
        """Right before a step 2 request: raises unless the lock is provably still ours."""
        ...

    def release_crdbs(self) -> None: ...


_PROCESS_LOCK = threading.Lock()  # vault_bridge's own updates, within one process


class FollowUpLock:
    """Held from step 1 until every step 2 finished: this process's lock plus, when the state
    directory can be used, ``flock`` on ``<state_dir>/followup.lock`` so that the agent and a
    ``vault-bridge follow-up`` never start updates in each other's window."""

    def __init__(self, state_dir: str | Path | None) -> None:
        self.path = Path(state_dir) / LOCK_FILE if state_dir else None
        self._fd: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        deadline = time.monotonic() + timeout if timeout >= 0 else None
        if not _PROCESS_LOCK.acquire(blocking, timeout):
            return False
        try:
            self._fd = self._open()
            if self._fd is None:
                return True
            wait = 0.0 if not blocking else _remaining(deadline)
            if flock_within(self._fd, wait, poll=0.05):
                return True
            os.close(self._fd)
            self._fd = None
            _PROCESS_LOCK.release()
            return False
        except BaseException:
            _PROCESS_LOCK.release()
            raise

    def _open(self) -> int | None:
        if self.path is None:
            return None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            logger.debug("follow-up lock file %s unusable (%s): process lock only", self.path, exc)
            return None

    def release(self) -> None:
        if self._fd is not None:
            unlock(self._fd)
            os.close(self._fd)
            self._fd = None
        _PROCESS_LOCK.release()


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@dataclass
class Job:
    """One step 2 action, its thread and what came of it."""

    kind: StepKind
    what: str
    clusters: tuple[str, ...]  # the changing clusters it follows (their windows it closes)
    keys: tuple[Key, ...]  # changes its failure fails
    action: Callable[[Job], None]
    warm: Callable[[], object] | None = None  # run while armed, before the go
    targets: tuple[str, ...] = ()  # clusters it sends REST requests to
    guid: str | None = None  # the CRDB of a "crdb" job
    go: threading.Event = field(default_factory=threading.Event)
    warmed: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    thread: threading.Thread | None = None
    sent: float | None = None
    done: float | None = None
    error: str | None = None

    planned_keys: tuple[Key, ...] = field(init=False, default=())  # keys as planned

    def __post_init__(self) -> None:
        self.planned_keys = self.keys

    def armed(self) -> ArmedStep:
        """The job as the window's decisions see it."""
        return ArmedStep(
            self.kind, self.guid, self.clusters, self.planned_keys, self.go.is_set(), self.cancelled
        )

    def ready(self, installed: set[Key]) -> bool:
        """May it go, given the changes installed so far (:func:`may_go`)?"""
        return may_go(self.armed(), installed)

    def mark_sent(self, at: float) -> None:
        if self.sent is None:
            self.sent = at

    def fire(self) -> None:
        self.go.set()

    def cancel(self) -> None:
        if not self.go.is_set():
            self.cancelled = True
            self.go.set()


def start(jobs: Sequence[Job], run: Callable[[Job], None], *, wait: float) -> None:
    """One daemon thread per job: it warms up, waits (up to ``wait`` s) for the go or the
    cancel, then runs the job through ``run``."""
    for index, job in enumerate(jobs):
        job.thread = threading.Thread(
            target=_armed, args=(job, run, wait), name=f"followup-{index}", daemon=True
        )
        job.thread.start()


def _armed(job: Job, run: Callable[[Job], None], wait: float) -> None:
    if job.warm is not None and not job.go.is_set():
        try:
            job.warm()
        except VaultBridgeError as exc:
            logger.debug("follow-up %s: warming up: %s", job.what, exc)
    job.warmed.set()
    if not job.go.wait(wait):
        job.cancelled = True
    if not job.cancelled:
        run(job)


def join(jobs: Sequence[Job]) -> None:
    for job in jobs:
        if job.thread is not None:
            job.thread.join()
