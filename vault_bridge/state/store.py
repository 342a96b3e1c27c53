"""The state directory on disk: atomic writes, the lock, the agent's pid and the CLI's requests.

Layout of ``[agent] state_dir`` (mode 0700; every file 0600)::

    state.json           certificates (serial, not_after, mount, lease, issue times, backoff),
                         superseded certificates awaiting revocation, and the intent journal
    lock                 flock()ed by whoever rotates: the agent, `run --once` or `issue`
    agent.pid            the running agent's pid (for `issue` to wake it with SIGUSR1)
    requests/            `issue` / `run --once` requests handed to a running agent, and results
    state.json.corrupt-* a copy of a state file that could not be read (kept, never deleted)

``state.json`` is rewritten whole and atomically (temp file in the same directory, fsync,
``os.replace``, fsync of the directory), so a crash leaves the old or the new version, never a
mix. It holds public data only: serials, dates, fingerprints, lease IDs, public certificate
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
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vault_bridge.adapters.file_lock import flock_within
from vault_bridge.errors import StateError
from vault_bridge.models.times import file_stamp, utc_now
from vault_bridge.state.records import State

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
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

    def __repr__(self) -> str:
        return f"StateDir({str(self.path)!r})"

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

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
        for directory in (self.path, self.requests_path):
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
        """Read ``state.json`` (an empty state when there is none).

        A file that cannot be parsed is copied to ``state.json.corrupt-<time>`` (it is never
        deleted nor overwritten) and :class:`StateError` names both files.
        """
        path = self.state_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise _state_error("read", path, exc) from exc
        try:
            return State.from_json(json.loads(raw.decode("utf-8")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            copy = self._keep_corrupt(raw)
            where = f"a copy is kept at {copy}" if copy else "no copy could be made"
            raise StateError(
                f"state file {path} is corrupt ({type(exc).__name__}: {exc}); {where}. "
                "Repair or remove it (the agent then starts from what the clusters serve), "
                "then send SIGHUP or restart"
            ) from exc

    def _keep_corrupt(self, raw: bytes) -> Path | None:
        for existing in sorted(self.path.glob(f"{STATE_FILE}.corrupt-*")):
            with contextlib.suppress(OSError):
                if existing.read_bytes() == raw:
                    return existing
        stamp = file_stamp(utc_now())
        copy = self.path / f"{STATE_FILE}.corrupt-{stamp}"
        try:
            write_atomic(copy, raw)
        except StateError as exc:
            logger.error("cannot keep a copy of the corrupt state file: %s", exc)
            return None
        return copy

    def save(self, state: State) -> None:
        write_atomic(self.state_path, json.dumps(state.to_json(), indent=1, sort_keys=True) + "\n")

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


class LockHeld(StateError):
    """The state directory is locked by another process (an agent when ``agent_pid`` is set)."""

    def __init__(self, state_dir: StateDir, agent_pid: int | None) -> None:
        holder = f"the agent (pid {agent_pid})" if agent_pid else "another vault-bridge process"
        super().__init__(f"the state directory {state_dir.path} is locked by {holder}")
        self.agent_pid = agent_pid
