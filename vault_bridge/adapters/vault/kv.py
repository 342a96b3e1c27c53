"""Vault's KV version 2 engine with check-and-set: the records high availability keeps.

Every write carries ``options.cas``: the version the writer read (0: the record must not exist
yet), so a write based on a stale read fails (:class:`~vault_bridge.errors.CasConflictError`)
instead of overwriting a newer version. Records hold public data only (replica ids, times,
serials, public certificates): never a key, token, password or secret ID.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from vault_bridge.adapters.vault.client import VaultClient
from vault_bridge.errors import CasConflictError, VaultError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KvEntry:
    """One KV v2 record: its data and its version (the ``cas`` of the next write)."""

    data: Mapping[str, Any]
    version: int


class KvStore(Protocol):
    """What high availability needs of KV v2 (:class:`KvV2`; an in-memory one in tests)."""

    mount: str

    def read(self, path: str) -> KvEntry | None: ...

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int: ...

    def close(self) -> None: ...


class KvV2:
    """The records under one KV v2 mount, through a :class:`VaultClient` (its login)."""

    def __init__(self, vault: VaultClient, mount: str) -> None:
        self.vault = vault
        self.mount = mount.strip("/")

    def __repr__(self) -> str:
        return f"KvV2({self.mount!r})"

    def read(self, path: str) -> KvEntry | None:
        """GET: /{mount}/data/{path}

        The current version (None when the record was never written; a deleted version reads
        as empty data with its version number)."""
        api_path = f"{self.mount}/data/{path}"
        self.vault.ensure_token()
        try:
            resp = self.vault._call(
                "GET",
                api_path,
                lambda: self.vault._hvac.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=self.mount, raise_on_deleted_version=False
                ),
                capability="read",
                not_found=f"no record at {api_path}",
            )
        except VaultError as exc:
            if exc.status == 404:
                return None
            raise
        body = resp.get("data") if isinstance(resp, dict) else None
        if not isinstance(body, dict):
            raise VaultError(f"{api_path} answered without data", method="GET", url=self._url(path))
        metadata = body.get("metadata")
        version = metadata.get("version") if isinstance(metadata, dict) else None
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise VaultError(
                f"{api_path} answered without a version", method="GET", url=self._url(path)
            )
        data = body.get("data")
        if data is not None and not isinstance(data, dict):
            raise VaultError(f"{api_path} holds no object", method="GET", url=self._url(path))
        return KvEntry(data or {}, version)

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        """POST: /{mount}/data/{path} with ``options.cas``; returns the new version.

        Raises :class:`CasConflictError` when the record is no longer at version ``cas``."""
        api_path = f"{self.mount}/data/{path}"
        self.vault.ensure_token()
        try:
            resp = self.vault._call(
                "POST",
                api_path,
                lambda: self.vault._hvac.secrets.kv.v2.create_or_update_secret(
                    path=path, secret=dict(data), cas=cas, mount_point=self.mount
                ),
                capability="create" if cas == 0 else "update",
            )
        except VaultError as exc:
            if exc.status == 400 and "check-and-set" in str(exc):
                raise CasConflictError(
                    f"{api_path} changed since version {cas} was read",
                    method="POST",
                    url=self._url(path),
                    status=400,
                ) from exc
            raise
        body = resp.get("data") if isinstance(resp, dict) else None
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, int) or isinstance(version, bool) or version <= cas:
            raise VaultError(
                f"{api_path} answered the write without a new version",
                method="POST",
                url=self._url(path),
            )
        return version

    def close(self) -> None:
        """Close the Vault client's HTTP session."""
        self.vault.close()

    def _url(self, path: str) -> str:
        return f"{self.vault.address}/v1/{self.mount}/data/{path}"
