"""The one error hierarchy of vault_bridge.

Every error the core raises is a :class:`VaultBridgeError`; the CLI catches it once, prints
one line and maps it to an exit code. Errors carry the context needed to act on them.
"""

from __future__ import annotations


class VaultBridgeError(Exception):
    """Root of every error vault_bridge raises on purpose."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        cluster: str | None = None,
        certificate: str | None = None,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.cluster = cluster
        self.certificate = certificate
        self.method = method
        self.url = url
        self.status = status

    def __str__(self) -> str:
        where = []
        if self.certificate and self.cluster:
            where.append(f"{self.certificate} on {self.cluster}")
        elif self.cluster:
            where.append(f"cluster {self.cluster}")
        elif self.certificate:
            where.append(self.certificate)
        if self.method and self.url:
            where.append(f"{self.method} {self.url}")
        if self.status is not None:
            where.append(f"HTTP {self.status}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{prefix}{self.message}"


class ConfigError(VaultBridgeError):
    """The configuration is invalid (exit code 2)."""

    exit_code = 2


class VaultError(VaultBridgeError):
    """Vault refused or failed a request."""


class VaultPermissionError(VaultError):
    """Vault answered 403: the policy lacks a capability. Never retried."""


class VaultUnavailableError(VaultError):
    """Vault could not be reached or is sealed: retry later."""


class CertificateError(VaultBridgeError):
    """A certificate failed the checks made before installing it; it is never installed."""


class ClusterError(VaultBridgeError):
    """The Redis Enterprise REST API refused or failed a request."""

    def __init__(self, message: str, *, retryable: bool = False, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retryable = retryable


class VerificationError(VaultBridgeError):
    """An installed certificate is not what the cluster reads back or serves."""


class DeferredError(VaultBridgeError):
    """A hook skipped a certificate this pass on purpose (stopping, journal pending): the
    pass reports it, but it is logged at INFO, not as a failure of the certificate."""


class FollowUpError(VaultBridgeError):
    """An Active-Active or Replica Of follow-up failed."""


class StateError(VaultBridgeError):
    """The state directory cannot be read or written; issuing stops until it can."""


class CasConflictError(VaultError):
    """A check-and-set write to Vault's KV engine lost: someone wrote a newer version first."""


class LeaseLostError(StateError):
    """High availability: this replica cannot prove it still holds a cluster's lease (or a
    CRDB lock), so it neither writes state nor sends anything for it."""


class LabMissingError(VaultBridgeError):
    """A command of the lab distribution (``vault-bridge-lab``) was asked for without it."""
