"""The state directory on disk: atomic writes, the lock, the agent's pid and the CLI's requests.

Layout of ``[agent] state_dir`` (mode 0700; every file 0600)::

    state.json           the layout's version (2): the state itself is in clusters/
    clusters/<name>.json one cluster's certificates (serial, not_after, mount, lease, issue
                         times, backoff), superseded certificates awaiting revocation and intent
                         journal entries
    lock                 flock()ed by whoever rotates: the agent, `run --once` or `issue`
    agent.pid            the running agent's pid (for `issue` to wake it with SIGUSR1)
    requests/            `issue` / `run --once` requests handed to a running agent, and results
    *.corrupt-<time>     a copy of a state file that could not be read (kept, never deleted)

Each file is rewritten whole and atomically (temp file in the same directory, fsync,
``os.replace``, fsync of the directory), so a crash leaves the old or the new version, never a
mix. A step of a rotation rewrites only its own cluster's file: what a write costs does not grow
with the fleet. Every change the journal records concerns one cluster/certificate, so the files
never need to change together. A ``state.json`` of version 1 (the whole state in one file) is
migrated at the first load: the cluster files are written, then ``state.json`` is replaced by
the version 2 marker; a crash in between migrates again. The files hold public data only: serials, dates, fingerprints, lease IDs, public certificate
PEMs. Never a private key, token, password or secret ID. What it holds is
:mod:`vault_bridge.state.records`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vault_bridge.adapters.file_lock import flock_within
from vault_bridge.errors import StateError
from vault_bridge.models.times import file_stamp, utc_now
from vault_bridge.state.records import LEGACY_VERSION, STATE_VERSION, State

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
CLUSTERS_DIR = "clusters"
LOCK_FILE = "lock"
PID_FILE = "agent.pid"
REQUESTS_DIR = "requests"


def _state_error(action: str, path: Path, exc: OSError) -> StateError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif exc.errno == errno.EROFS:
        reason = "read-only file system"
    return StateError(f"cannot {action} {path}: {reason}; nothing is issued until it works")


def write_atomic(path: Path, content: str | bytes) -> None:
    """Replace ``path`` with ``content``: temp file in the same directory (0600), fsync,
    ``os.replace``, fsync of the directory. Raises :class:`StateError`."""
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _state_error("write in", directory, exc) from exc
    try:
        try:
            os.fchmod(fd, 0o600)
            data = content.encode() if isinstance(content, str) else content
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _state_error("write", path, exc) from exc
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _state_error("open", directory, exc) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _state_error("sync", directory, exc) from exc
    finally:
        os.close(fd)


class StateDir:
    """The state directory: ``state.json``, the lock, the agent's pid and the requests."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._written: dict[str, str] = {}  # cluster -> the content of its file, as last written
        self._marked = False  # the version 2 marker is known to be in place
        self._save_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StateDir({str(self.path)!r})"

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def clusters_path(self) -> Path:
        return self.path / CLUSTERS_DIR

    def cluster_path(self, cluster: str) -> Path:
        """``clusters/<name>.json``, the name percent-encoded (never a path of its own)."""
        name = quote(cluster, safe="")
        if name.startswith("."):
            name = "%2E" + name[1:]
        return self.clusters_path / f"{name}.json"

    @property
    def requests_path(self) -> Path:
        return self.path / REQUESTS_DIR

    def ensure(self) -> None:
        """Create the directory (0700) and ``requests/``; tighten a looser mode.

        Raises :class:`StateError` when the directory cannot be created; a read-only one
        that exists is left to fail at the first write (with the same error).
        """
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise _state_error("create", self.path, exc) from exc
        for directory in (self.path, self.requests_path, self.clusters_path):
            try:
                directory.mkdir(mode=0o700, exist_ok=True)
                mode = directory.stat().st_mode & 0o777
                if mode & 0o077:
                    os.chmod(directory, 0o700)
                    logger.warning("%s had mode %o; set it to 0700", directory, mode)
            except OSError as exc:
                logger.warning("%s", _state_error("prepare", directory, exc))

    # -- state.json --------------------------------------------------------------------------

    def load(self) -> State:
        """Read the state (an empty state when there is none), migrating a ``state.json`` of
        version 1 to one file per cluster.

        A file that cannot be parsed is copied to ``<file>.corrupt-<time>`` (it is never
        deleted nor overwritten) and :class:`StateError` names both files.
        """
        marker = self._read(self.state_path)
        if marker is not None:
            version = marker.get("version") if isinstance(marker, dict) else None
            if version == LEGACY_VERSION:
                state = self._parse(self.state_path, marker)
                self._migrate(state)
                return state
            if version != STATE_VERSION or not isinstance(marker, dict):
                self._parse(self.state_path, marker)  # raises, naming the file
            self._marked = True
        # The marker of version 2, or none yet: the cluster files are the state.
        state = State()
        written: dict[str, str] = {}
        try:
            paths = sorted(self.clusters_path.glob("*.json"))
        except OSError as exc:
            raise _state_error("read", self.clusters_path, exc) from exc
        for path in paths:
            data = self._read(path)
            if data is None:
                continue
            part = self._parse(path, data)
            state.merge(part)
            cluster = data.get("cluster") if isinstance(data, dict) else None
            if isinstance(cluster, str):
                written[cluster] = _dumps(part.to_json(cluster))
        self._written = written
        return state

    def _read(self, path: Path) -> Any:
        """The JSON in ``path``; None when there is no such file."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _state_error("read", path, exc) from exc
        try:
            return json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._corrupt(path, raw, exc) from exc

    def _parse(self, path: Path, data: Any) -> State:
        try:
            return State.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise self._corrupt(path, path.read_bytes(), exc) from exc

    def _corrupt(self, path: Path, raw: bytes, exc: Exception) -> StateError:
        copy = self._keep_corrupt(path, raw)
        where = f"a copy is kept at {copy}" if copy else "no copy could be made"
        return StateError(
            f"state file {path} is corrupt ({type(exc).__name__}: {exc}); {where}. "
            "Repair or remove it (the agent then starts from what the clusters serve), "
            "then send SIGHUP or restart"
        )

    def _keep_corrupt(self, path: Path, raw: bytes) -> Path | None:
        for existing in sorted(path.parent.glob(f"{path.name}.corrupt-*")):
            with contextlib.suppress(OSError):
                if existing.read_bytes() == raw:
                    return existing
        stamp = file_stamp(utc_now())
        copy = path.parent / f"{path.name}.corrupt-{stamp}"
        try:
            write_atomic(copy, raw)
        except StateError as exc:
            logger.error("cannot keep a copy of the corrupt state file: %s", exc)
            return None
        return copy

    def _migrate(self, state: State) -> None:
        """Version 1 -> 2: every cluster's file first, then the marker over ``state.json``."""
        clusters = sorted(state.clusters())
        with self._save_lock:
            self._written = {}
            self._write_clusters(state, clusters)
            self._write_marker()
        logger.info(
            "state migrated to one file per cluster (%d cluster(s)) in %s",
            len(clusters),
            self.clusters_path,
        )

    def save(self, state: State, clusters: Iterable[str] | None = None) -> None:
        """Write the files of ``clusters`` (a step of a rotation touches one cluster); with
        None, the marker and every cluster whose content changed since it was last written."""
        with self._save_lock:
            if clusters is None:
                self._write_marker()
                self._write_clusters(state, sorted(state.clusters() | set(self._written)))
            else:
                self._write_clusters(state, sorted(set(clusters)))

    def _write_marker(self) -> None:
        write_atomic(self.state_path, _dumps({"version": STATE_VERSION, "layout": CLUSTERS_DIR}))
        self._marked = True

    def _write_clusters(self, state: State, clusters: Iterable[str]) -> None:
        for cluster in clusters:
            text = _dumps(state.to_json(cluster))
            if self._written.get(cluster) == text:
                continue
            if not self._marked and not self.state_path.exists():
                self._write_marker()  # an earlier version finds a state it cannot read
            path = self.cluster_path(cluster)
            if not self.clusters_path.is_dir():
                try:
                    self.clusters_path.mkdir(mode=0o700, exist_ok=True)
                except OSError as exc:
                    raise _state_error("create", self.clusters_path, exc) from exc
            write_atomic(path, text)
            self._written[cluster] = text

    # -- lock and pid ------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, role: str, *, wait: float = 0.0, poll: float = 0.1) -> Iterator[None]:
        """Hold the directory's lock (``flock`` on ``lock``) for the block.

        Waits up to ``wait`` seconds; raises :class:`LockHeld` (naming the holder) when it
        stays taken. The lock goes with the process: a killed holder releases it.
        """
        path = self.path / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            try:  # a read-only directory: flock() works on a read-only descriptor too
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise _state_error("open", path, exc) from exc
        try:
            if not flock_within(fd, wait, poll=poll):
                raise LockHeld(self, self.agent_pid())
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {role}\n".encode())
            if role != "agent":
                # Holding the lock proves no agent runs: an agent.pid left by a killed one
                # must not send a later `issue` to whatever process now has that pid.
                self.clear_pid()
            yield
        finally:
            os.close(fd)  # releases the flock

    def write_pid(self) -> None:
        write_atomic(self.path / PID_FILE, f"{os.getpid()}\n")

    def clear_pid(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / PID_FILE).unlink()

    def agent_pid(self) -> int | None:
        """The pid in ``agent.pid`` when that process is alive."""
        try:
            pid = int((self.path / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    # -- requests from the CLI to a running agent --------------------------------------------

    def submit(self, request: Mapping[str, Any]) -> str:
        """Write a request for the agent; returns its id."""
        request_id = f"{int(time.time())}-{secrets.token_hex(6)}"
        body = {**request, "id": request_id}
        try:
            self.requests_path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise _state_error("create", self.requests_path, exc) from exc
        write_atomic(self.requests_path / f"{request_id}.json", json.dumps(body))
        return request_id

    def take_requests(self) -> list[dict[str, Any]]:
        """Pending requests, oldest first; each is removed as it is taken."""
        try:
            paths = sorted(self.requests_path.glob("*.json"))
        except OSError:
            return []
        out = []
        for path in paths:
            if path.name.endswith(".result.json"):
                continue
            try:
                body = json.loads(path.read_text())
                path.unlink()
            except (OSError, ValueError) as exc:
                logger.warning("ignoring unreadable request %s: %s", path.name, exc)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if isinstance(body, dict) and isinstance(body.get("id"), str):
                out.append(body)
        return out

    def withdraw(self, request_id: str) -> bool:
        """Remove a request the agent has not taken yet; True when it was still there."""
        try:
            (self.requests_path / f"{request_id}.json").unlink()
        except FileNotFoundError:
            return False
        return True

    def write_result(self, request_id: str, result: Mapping[str, Any]) -> None:
        write_atomic(self.requests_path / f"{request_id}.result.json", json.dumps(result))

    def read_result(self, request_id: str) -> dict[str, Any] | None:
        """The agent's answer to a request (removed once read), or None while there is none."""
        path = self.requests_path / f"{request_id}.result.json"
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read the agent's answer {path}: {exc}") from exc
        with contextlib.suppress(OSError):
            path.unlink()
        return body if isinstance(body, dict) else None

    def prune_results(self, older_than: float) -> None:
        """Remove answers nobody collected (their CLI gave up) older than ``older_than`` s."""
        cutoff = time.time() - older_than
        with contextlib.suppress(OSError):
            for path in self.requests_path.glob("*.result.json"):
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


class LockHeld(StateError):
    """The state directory is locked by another process (an agent when ``agent_pid`` is set)."""

    def __init__(self, state_dir: StateDir, agent_pid: int | None) -> None:
        holder = f"the agent (pid {agent_pid})" if agent_pid else "another vault-bridge process"
        super().__init__(f"the state directory {state_dir.path} is locked by {holder}")
        self.agent_pid = agent_pid
