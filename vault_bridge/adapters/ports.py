"""The ports: what the core (rotation, state, agent) uses of each outside system, as Protocols.

The executor, the follow-ups, the passes, revocation and the one-shot pass take these types,
not the concrete adapters, so that in-memory fakes (``tests/fakes/``) stand in for them in
unit tests. The adapters that implement them in production:

- :class:`VaultAuth` and :class:`VaultPki` (together :class:`Vault`):
  :class:`vault_bridge.adapters.vault.client.VaultClient`;
- :class:`ClusterCertificates` and :class:`ClusterDatabases` (together :class:`ClusterApi`):
  :class:`vault_bridge.adapters.redis_enterprise.ClusterClient`;
- :class:`TlsProbe`: :func:`vault_bridge.adapters.tls_probe.served_certificate`;
- :class:`CrdbRunner`: the runners of :mod:`vault_bridge.adapters.crdb_runners`;
- :class:`Clock`, :class:`Monotonic` and :class:`Sleep`: ``datetime.now(UTC)``,
  ``time.monotonic`` and ``time.sleep``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from vault_bridge.decisions.install import CertUpload
from vault_bridge.models.certificates import (
    CertificateInfo,
    InstalledCertificate,
    IssuedCertificate,
)
from vault_bridge.models.cluster import Bdb, ClusterAccess, Crdb, CrdbTask, OcspConfig, OcspStatus
from vault_bridge.models.vault import MountIssuers, TokenInfo

# -- time ------------------------------------------------------------------------------------


class Clock(Protocol):
    """The current time, timezone-aware UTC."""

    def __call__(self) -> datetime: ...


class Monotonic(Protocol):
    """Seconds on a clock that never goes back (for bounds and measured windows)."""

    def __call__(self) -> float: ...


class Sleep(Protocol):
    """Wait ``seconds``."""

    def __call__(self, seconds: float, /) -> None: ...


# -- Vault -----------------------------------------------------------------------------------


class VaultAuth(Protocol):
    """Login and token upkeep."""

    @property
    def token_info(self) -> TokenInfo | None:
        """What the last login, lookup or renewal said about the token."""
        ...

    @property
    def token_expires_at(self) -> datetime | None:
        """When the current token expires (None: not logged in, or it never expires)."""
        ...

    def ensure_token(self) -> TokenInfo:
        """Log in, renew (POST auth/token/renew-self) or look up (GET
        auth/token/lookup-self), whichever the token needs."""
        ...


class VaultPki(Protocol):
    """The PKI endpoints the core calls."""

    def sign(
        self,
        mount: str,
        role: str,
        csr_pem: str,
        *,
        common_name: str,
        alt_names: Sequence[str] = (),
        ip_sans: Sequence[str] = (),
        ttl: timedelta | str | None = None,
        issuer_ref: str | None = None,
    ) -> dict[str, Any]:
        """POST: /{mount}/sign/{role} (or /{mount}/issuer/{issuer_ref}/sign/{role}); the
        answer's ``data`` (``lease_id`` added)."""
        ...

    def issue(
        self,
        mount: str,
        role: str,
        *,
        common_name: str,
        alt_names: Sequence[str] = (),
        ip_sans: Sequence[str] = (),
        ttl: timedelta | str | None = None,
        issuer_ref: str | None = None,
    ) -> IssuedCertificate:
        """POST: /{mount}/issue/{role} (or /{mount}/issuer/{issuer_ref}/issue/{role})"""
        ...

    def mount_issuers(self, mount: str) -> MountIssuers:
        """LIST: /{mount}/issuers, then GET: /{mount}/issuer/{id}/json for each: every issuer
        of the mount with its chain, and the default."""
        ...

    def certificate_revoked(self, mount: str, serial: str) -> bool | None:
        """GET: /{mount}/cert/{serial}: True only when Vault says it is revoked."""
        ...

    def ca_chain(self, mount: str) -> list[str]:
        """GET: /{mount}/cert/ca_chain; the PEMs, issuing CA first."""
        ...

    def revoke(
        self, mount: str, *, serial: str | None = None, certificate: str | None = None
    ) -> None:
        """POST: /{mount}/revoke (by ``serial`` or by ``certificate`` PEM, exactly one)."""
        ...


class Vault(VaultAuth, VaultPki, Protocol):
    """Everything the core uses of Vault."""


# -- the Redis Enterprise REST API -----------------------------------------------------------


class ClusterCertificates(Protocol):
    """The certificate endpoints of one cluster (the executor and the journal replay)."""

    @property
    def name(self) -> str:
        """The cluster's name in the configuration."""
        ...

    def set_trust(self, extra_ca_pems: Sequence[str]) -> None:
        """Trust these CA certificates for the REST API too (no request)."""
        ...

    @property
    def backoff(self) -> float:
        """The first retry delay in seconds (the executor waits it before an install's
        read-back)."""
        ...

    def certificates(self) -> dict[str, InstalledCertificate]:
        """GET /v1/cluster/certificates -> installed certificates by name."""
        ...

    def last_certificates(self) -> dict[str, InstalledCertificate]:
        """The answer of the last :meth:`certificates` while no install request was sent
        since and it is recent (else a new GET /v1/cluster/certificates)."""
        ...

    def forget_certificates(self) -> None:
        """The next :meth:`last_certificates` reads the cluster again (no request)."""
        ...

    def lowest_version(self) -> tuple[int, ...]:
        """The lowest ``software_version`` over the nodes (GET /v1/nodes)."""
        ...

    def put_certificates(self, items: Sequence[CertUpload]) -> None:
        """PUT /v1/cluster/certificates (bulk, 7.22.2+)."""
        ...

    def update_cert(self, item: CertUpload) -> None:
        """PUT /v1/cluster/update_cert (one certificate)."""
        ...


class ClusterDatabases(Protocol):
    """The database and Active-Active endpoints of one cluster (the follow-ups)."""

    @property
    def name(self) -> str: ...

    def certificates(self) -> dict[str, InstalledCertificate]:
        """GET /v1/cluster/certificates -> installed certificates by name."""
        ...

    def last_certificates(self) -> dict[str, InstalledCertificate]:
        """The pass's own read when there is one (else a new GET /v1/cluster/certificates)."""
        ...

    def reserve_connections(self, count: int) -> None:
        """Keep up to ``count`` connections open for concurrent requests (no request)."""
        ...

    def crdbs(self) -> list[Crdb]:
        """GET /v1/crdbs"""
        ...

    def crdb(self, guid: str) -> Crdb:
        """GET /v1/crdbs/<guid>"""
        ...

    def crdb_tasks(self) -> list[CrdbTask]:
        """GET /v1/crdb_tasks"""
        ...

    def crdb_task(self, task_id: str) -> CrdbTask:
        """GET /v1/crdb_tasks/<id>"""
        ...

    def crdb_update(
        self, guid: str, body: Mapping[str, Any] | None = None, *, task_id: str | None = None
    ) -> CrdbTask:
        """POST /v1/crdbs/<guid>/updates (default ``{"force_update": true}``) with an
        ``X-Task-ID`` (``task_id``, or a new one); sent once."""
        ...

    def bdbs(self) -> list[Bdb]:
        """GET /v1/bdbs"""
        ...

    def bdb(self, uid: int) -> Bdb:
        """GET /v1/bdbs/<uid>"""
        ...

    def update_bdb(self, uid: int, changes: Mapping[str, Any]) -> Bdb:
        """PUT /v1/bdbs/<uid>"""
        ...


@runtime_checkable
class ClusterOcsp(Protocol):
    """OCSP stapling of one cluster's proxy certificate."""

    @property
    def name(self) -> str: ...

    def ocsp(self) -> OcspConfig | None:
        """GET /v1/ocsp (None: no OCSP on this cluster)"""
        ...

    def last_ocsp(self, max_age: float = 60.0) -> OcspConfig | None:
        """GET /v1/ocsp, or the answer of the last one (younger than ``max_age`` s)"""
        ...

    def enable_ocsp(self) -> OcspConfig:
        """PUT /v1/ocsp"""
        ...

    def ocsp_status(self) -> OcspStatus:
        """GET /v1/ocsp/status"""
        ...

    def ocsp_test(self) -> OcspStatus:
        """POST /v1/ocsp/test"""
        ...


@runtime_checkable
class ClusterDatabaseCertificates(ClusterDatabases, Protocol):
    """The databases' own proxy certificates (and the databases around them)."""

    def bdb_certificates(
        self, expires_before: str | None = None
    ) -> dict[int, InstalledCertificate]:
        """GET /v1/bdbs/certificates"""
        ...

    def bdb_certificate(self, uid: int) -> InstalledCertificate | None:
        """GET /v1/bdbs/<uid>/certificates"""
        ...

    def set_bdb_certificate(self, uid: int, upload: CertUpload, *, dry_run: bool) -> None:
        """POST /v1/bdbs/<uid>/certificates[?dry_run=true]"""
        ...


@runtime_checkable
class ClusterAccessSettings(Protocol):
    """How one cluster lets vault_bridge in, and its cipher settings."""

    def access(self) -> ClusterAccess:
        """GET /v1/cluster"""
        ...


class ClusterApi(ClusterCertificates, ClusterDatabases, Protocol):
    """Everything the core uses of one cluster's REST API."""

    def close(self) -> None: ...


# -- TLS probing -----------------------------------------------------------------------------


class TlsProbe(Protocol):
    """A TLS handshake with ``host:port``: the leaf it serves (no trust check); raises
    :class:`vault_bridge.errors.VerificationError` when there is none."""

    def __call__(self, endpoint: str, /) -> CertificateInfo: ...


# -- step 2 of the Active-Active follow-up ---------------------------------------------------


@dataclass(frozen=True)
class UpdateResult:
    """A finished update task."""

    guid: str
    task_id: str
    status: str
    output: str = ""


class CrdbRunner(Protocol):
    """Runs ``crdb update --crdb-guid <GUID> --force`` and waits for its task to end."""

    @property
    def kind(self) -> str:
        """``rest`` | ``crdb-cli`` | ``docker``"""
        ...

    def warm(self, guid: str) -> None:
        """Before step 1: make step 2 as quick to start as it can be (a connection, a client)."""
        ...

    def update(self, guid: str, *, on_sent: Callable[[], None]) -> UpdateResult:
        """Raises :class:`vault_bridge.errors.FollowUpError` when the task fails or does not
        finish in time."""
        ...
