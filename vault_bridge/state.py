"""The state directory: what the agent remembers between runs, its lock and the CLI's requests.

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
PEMs. Never a private key, token, password or secret ID.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from vault_bridge.config import CertSpec, Settings
from vault_bridge.durations import parse_duration
from vault_bridge.errors import StateError, VaultBridgeError
from vault_bridge.models import CertChange, CertificateInfo, CertName, IssuedCertificate
from vault_bridge.rotation import Change, Rotator
from vault_bridge.schedule import Backoff, is_expiring, recent_issues, runaway_until

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
LOCK_FILE = "lock"
PID_FILE = "agent.pid"
REQUESTS_DIR = "requests"
STATE_VERSION = 1

Key = tuple[str, str]  # (cluster, certificate name)
Clock = Callable[[], datetime]
Phase = Literal["issued", "installing", "followups"]


# -- values ----------------------------------------------------------------------------------


def _json_time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"time without a timezone: {value!r}")
    return parsed.astimezone(UTC)


def _req_time(value: Any) -> datetime:
    parsed = _time(value)
    if parsed is None:
        raise ValueError("missing time")
    return parsed


def key_text(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


@dataclass(frozen=True)
class CertRecord:
    """The certificate of ours installed for one cluster/name, as far as we know."""

    serial: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    fingerprint: str | None = None
    mount: str | None = None
    lease_id: str | None = None
    issued_at: tuple[datetime, ...] = ()  # issue times in the last hour (runaway guard)
    backoff: Backoff = field(default_factory=Backoff)

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "not_before": _json_time(self.not_before),
            "not_after": _json_time(self.not_after),
            "fingerprint": self.fingerprint,
            "mount": self.mount,
            "lease_id": self.lease_id,
            "issued_at": [_json_time(t) for t in self.issued_at],
            "backoff": {
                "failures": self.backoff.failures,
                "next_attempt": _json_time(self.backoff.next_attempt),
                "last_error": self.backoff.last_error,
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CertRecord:
        backoff = data.get("backoff") or {}
        return cls(
            serial=data.get("serial"),
            not_before=_time(data.get("not_before")),
            not_after=_time(data.get("not_after")),
            fingerprint=data.get("fingerprint"),
            mount=data.get("mount"),
            lease_id=data.get("lease_id"),
            issued_at=tuple(_req_time(t) for t in data.get("issued_at") or ()),
            backoff=Backoff(
                failures=int(backoff.get("failures") or 0),
                next_attempt=_time(backoff.get("next_attempt")),
                last_error=backoff.get("last_error"),
            ),
        )


@dataclass(frozen=True)
class Superseded:
    """A certificate of ours that is no longer installed, to revoke after the grace period."""

    cluster: str
    name: str
    serial: str
    mount: str
    not_after: datetime
    revoke_after: datetime
    reason: Literal["superseded", "orphan"] = "superseded"
    pem: str | None = None  # public certificate, to revoke by PEM when the role keeps no copy
    failures: int = 0
    next_attempt: datetime | None = None

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.failures, self.next_attempt)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("not_after", "revoke_after", "next_attempt"):
            out[name] = _json_time(getattr(self, name))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Superseded:
        reason = data.get("reason", "superseded")
        if reason not in ("superseded", "orphan"):
            raise ValueError(f"unknown reason {reason!r}")
        return cls(
            cluster=str(data["cluster"]),
            name=str(data["name"]),
            serial=str(data["serial"]),
            mount=str(data["mount"]),
            not_after=_req_time(data["not_after"]),
            revoke_after=_req_time(data["revoke_after"]),
            reason=reason,
            pem=data.get("pem"),
            failures=int(data.get("failures") or 0),
            next_attempt=_time(data.get("next_attempt")),
        )


@dataclass(frozen=True)
class Intent:
    """A journal entry: a certificate on its way to a cluster.

    ``issued``: Vault issued it, the install was not sent (on replay: never installed).
    ``installing``: the install request may have been sent (on replay: read the cluster).
    ``followups``: installed; the Active-Active / Replica Of follow-ups are pending.

    Public parts only: the private key is never journaled.
    """

    cluster: str
    name: str
    phase: Phase
    serial: str
    not_after: datetime
    mount: str
    new_pem: str  # the chain as installed, leaf first (public)
    old_pem: str | None  # what it replaces (public); the follow-ups need it
    lease_id: str | None = None
    started_at: datetime | None = None

    @property
    def key(self) -> Key:
        return (self.cluster, self.name)

    @property
    def info(self) -> CertificateInfo:
        return CertificateInfo.from_pem(self.new_pem)

    @property
    def cert_change(self) -> CertChange:
        return CertChange(self.cluster, self.name, self.new_pem, self.old_pem)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["not_after"] = _json_time(self.not_after)
        out["started_at"] = _json_time(self.started_at)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Intent:
        phase = data["phase"]
        if phase not in ("issued", "installing", "followups"):
            raise ValueError(f"unknown journal phase {phase!r}")
        return cls(
            cluster=str(data["cluster"]),
            name=str(data["name"]),
            phase=phase,
            serial=str(data["serial"]),
            not_after=_req_time(data["not_after"]),
            mount=str(data["mount"]),
            new_pem=str(data["new_pem"]),
            old_pem=data.get("old_pem"),
            lease_id=data.get("lease_id"),
            started_at=_time(data.get("started_at")),
        )


@dataclass
class State:
    """Everything in ``state.json``. Changed through the methods below, then saved."""

    certificates: dict[Key, CertRecord] = field(default_factory=dict)
    superseded: list[Superseded] = field(default_factory=list)
    journal: dict[Key, Intent] = field(default_factory=dict)  # in flight: issued, installing
    pending: dict[Key, Intent] = field(default_factory=dict)  # installed, follow-ups pending

    def record(self, key: Key) -> CertRecord:
        return self.certificates.get(key) or CertRecord()

    def update(self, key: Key, **changes: Any) -> CertRecord:
        record = replace(self.record(key), **changes)
        self.certificates[key] = record
        return record

    # -- the runaway guard -------------------------------------------------------------------

    def note_issue(self, key: Key, now: datetime) -> None:
        """Remember one more certificate asked of Vault (older than the window is dropped)."""
        recent = recent_issues(self.record(key).issued_at, now)
        self.update(key, issued_at=(*recent, now))

    def forget_issue(self, key: Key, at: datetime) -> None:
        times = list(self.record(key).issued_at)
        if at in times:
            times.remove(at)
        self.update(key, issued_at=tuple(times))

    # -- the journal -------------------------------------------------------------------------

    def journal_issued(self, intent: Intent) -> None:
        self._in_flight(intent)

    def journal_installing(self, intent: Intent) -> None:
        self._in_flight(intent)

    def _in_flight(self, intent: Intent) -> None:
        previous = self.journal.get(intent.key)
        if previous is not None and previous.phase == "issued" and previous.serial != intent.serial:
            self.orphan(previous, previous.started_at or intent.started_at or _epoch())
        self.journal[intent.key] = intent

    def journal_installed(self, key: Key, revoke_after: datetime) -> Intent | None:
        """The install of ``key`` happened: its follow-ups are pending now."""
        intent = self.journal.pop(key, None)
        if intent is None:
            return self.pending.get(key)
        earlier = self.pending.get(key)
        if earlier is not None and earlier.serial != intent.serial:
            # The follow-ups of an earlier change never finished: the databases still hold
            # that change's old certificate, so the follow-ups now go from it to the new
            # one; the certificate in between is superseded.
            intent = replace(intent, old_pem=earlier.old_pem)
            self.superseded.append(
                Superseded(
                    cluster=key[0],
                    name=key[1],
                    serial=earlier.serial,
                    mount=earlier.mount,
                    not_after=earlier.not_after,
                    revoke_after=revoke_after,
                    pem=_leaf_only(earlier.new_pem),
                )
            )
        self.pending[key] = replace(intent, phase="followups")
        return self.pending[key]

    def replacement_done(self, entry: Superseded) -> bool:
        """Whether what replaced ``entry`` is installed with its follow-ups done (nothing of
        its cluster/name left in the journal); an orphan replaced nothing."""
        key = (entry.cluster, entry.name)
        return entry.reason == "orphan" or (key not in self.journal and key not in self.pending)

    def complete(self, key: Key, revoke_after: datetime) -> Intent | None:
        """The change of ``key`` is installed and its follow-ups done: remember the new
        certificate, queue the one it replaced for revocation, clear the journal entry."""
        intent = self.pending.pop(key, None)
        if intent is None:
            return None
        record = self.record(key)
        old_serial = CertificateInfo.from_pem(intent.old_pem).serial if intent.old_pem else None
        if (
            record.serial
            and record.mount
            and record.not_after
            and record.serial == old_serial
            and record.serial != intent.serial
        ):
            self.superseded.append(
                Superseded(
                    cluster=key[0],
                    name=key[1],
                    serial=record.serial,
                    mount=record.mount,
                    not_after=record.not_after,
                    revoke_after=revoke_after,
                    pem=_leaf_only(intent.old_pem),
                )
            )
        info = intent.info
        self.update(
            key,
            serial=intent.serial,
            not_before=info.not_before,
            not_after=info.not_after,
            fingerprint=info.fingerprint,
            mount=intent.mount,
            lease_id=intent.lease_id,
            backoff=Backoff(),
        )
        return intent

    def orphan(self, intent: Intent, now: datetime) -> None:
        """A certificate Vault issued that never went in: revoke it without waiting."""
        if self.journal.get(intent.key) == intent:
            del self.journal[intent.key]
        self.superseded.append(
            Superseded(
                cluster=intent.cluster,
                name=intent.name,
                serial=intent.serial,
                mount=intent.mount,
                not_after=intent.not_after,
                revoke_after=now,
                reason="orphan",
                pem=_leaf_only(intent.new_pem),
            )
        )

    # -- JSON --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "certificates": {
                key_text(key): record.to_json() for key, record in sorted(self.certificates.items())
            },
            "superseded": [entry.to_json() for entry in self.superseded],
            "journal": [
                intent.to_json()
                for intent in sorted(
                    [*self.pending.values(), *self.journal.values()],
                    key=lambda i: (i.key, i.phase != "followups"),
                )
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> State:
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        version = data.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"unknown state version {version!r} (expected {STATE_VERSION})")
        certificates: dict[Key, CertRecord] = {}
        for text, record in (data.get("certificates") or {}).items():
            cluster, sep, name = str(text).rpartition("/")
            if not sep:
                raise ValueError(f"bad certificate key {text!r}")
            certificates[(cluster, name)] = CertRecord.from_json(record)
        superseded = [Superseded.from_json(e) for e in data.get("superseded") or ()]
        journal: dict[Key, Intent] = {}
        pending: dict[Key, Intent] = {}
        for entry in data.get("journal") or ():
            intent = Intent.from_json(entry)
            (pending if intent.phase == "followups" else journal)[intent.key] = intent
        return cls(certificates, superseded, journal, pending)


def _epoch() -> datetime:
    return datetime.fromtimestamp(0, UTC)


def _leaf_only(pem: str | None) -> str | None:
    if not pem:
        return None
    end = "-----END CERTIFICATE-----"
    head, sep, _ = pem.partition(end)
    return f"{head}{sep}\n" if sep else None


# -- files -----------------------------------------------------------------------------------


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
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
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
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockHeld(self, self.agent_pid()) from None
                    time.sleep(poll)
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


class RunawayGuardError(VaultBridgeError):
    """``max_issues_per_hour`` certificates were issued for one cluster/name: stop issuing it."""


class StoppingError(VaultBridgeError):
    """The agent is stopping: no new certificate is requested."""


class JournalPendingError(VaultBridgeError):
    """The journal still holds an earlier change of this certificate: it goes first."""


def iso(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value else "-"


def log_change(
    message: str,
    *,
    cluster: str,
    certificate: str,
    serial: str | None,
    not_after: datetime | None,
    level: int = logging.INFO,
) -> None:
    """One line per state change, with the certificate's context as structured fields."""
    logger.log(
        level,
        "%s: %s on %s (serial %s, not_after %s)",
        message,
        certificate,
        cluster,
        serial or "-",
        iso(not_after),
        extra={
            "cluster": cluster,
            "certificate": certificate,
            "serial": serial,
            "not_after": iso(not_after) if not_after else None,
        },
    )


# -- the journal as RotationHooks -------------------------------------------------------------


class Keeper:
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
    ) -> None:
        self.state_dir = state_dir
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
            self.state = self.state_dir.load()
        except StateError as exc:
            self.error = str(exc)
            raise
        self.error = None
        return self.state

    def save(self) -> None:
        if self.state is None:
            raise StateError(self.error or "the state is not loaded")
        try:
            self.state_dir.save(self.state)
        except StateError as exc:
            if self.error != str(exc):
                logger.error("%s", exc)
            self.error = str(exc)
            raise
        if self.error is not None:
            logger.info("the state directory is writable again")
        self.error = None

    def save_quietly(self) -> None:
        """Save after a step that has happened already (an install): a failure is logged and
        the agent stops issuing, but the step goes on."""
        with contextlib.suppress(StateError):
            self.save()

    def _grace(self) -> timedelta:
        return parse_duration(self.settings.agent.revoke_grace)

    def _mount(self, cluster: str, name: str) -> str:
        spec = self.settings.cluster(cluster).spec(name)
        return spec.pki_mount if spec else ""

    # -- RotationHooks -----------------------------------------------------------------------

    def before_issue(self, spec: CertSpec) -> None:
        key = (cluster, name) = (spec.cluster, spec.name.value)
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
        if until is not None:
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
            self.save()
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
                name=spec.name.value,
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
        self.save()

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
        self.save()

    def installed(self, changes: Sequence[Change]) -> None:
        assert self.state is not None
        revoke_after = self.clock() + self._grace()
        for change in changes:
            key = (change.cluster, change.name)
            self.state.journal_installed(key, revoke_after)
            self.state.update(key, backoff=Backoff())
            if self._on_installed is not None:
                self._on_installed(change)
        self.save_quietly()

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
        self.save_quietly()

    def _complete(self, key: Key) -> None:
        assert self.state is not None
        intent = self.state.complete(key, revoke_after=self.clock() + self._grace())
        if intent is None:
            return
        self.rotations[(*key, "success")] += 1
        log_change(
            "rotated",
            cluster=key[0],
            certificate=key[1],
            serial=intent.serial,
            not_after=intent.not_after,
        )

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
        now = self.clock()
        errors: dict[Key, str] = {}
        served: dict[str, dict[str, str]] = {}
        for key, intent in sorted(state.journal.items()):
            if intent.phase == "issued":
                state.orphan(intent, now)
                log_change(
                    "issued but never installed (will be revoked)",
                    cluster=key[0],
                    certificate=key[1],
                    serial=intent.serial,
                    not_after=intent.not_after,
                )
            elif intent.phase == "installing":
                client = rotator.clusters.get(intent.cluster)
                if client is None:
                    logger.warning("%s: cluster no longer configured; dropped", key_text(key))
                    state.orphan(intent, now)
                    continue
                if intent.cluster not in served:
                    try:
                        certs = client.certificates()
                    except VaultBridgeError as exc:
                        errors[key] = str(exc)
                        continue
                    served[intent.cluster] = {n: c.info.fingerprint for n, c in certs.items()}
                if served[intent.cluster].get(intent.name) == intent.info.fingerprint:
                    state.journal_installed(key, now + self._grace())
                    log_change(
                        "the interrupted install did happen",
                        cluster=key[0],
                        certificate=key[1],
                        serial=intent.serial,
                        not_after=intent.not_after,
                    )
                else:
                    state.orphan(intent, now)
                    log_change(
                        "the interrupted install did not happen (will be revoked)",
                        cluster=key[0],
                        certificate=key[1],
                        serial=intent.serial,
                        not_after=intent.not_after,
                    )
        pending = list(state.pending.values())
        needing = [i for i in pending if _needs_followup(i.name)]
        if needing and rotator.followups is not None:
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
            errors.update(failed)
        for intent in pending:
            if intent.key not in errors:
                self._complete(intent.key)
        self.save_quietly()
        return errors


def _needs_followup(name: str) -> bool:
    try:
        return CertName(name).needs_followup
    except ValueError:
        return False
