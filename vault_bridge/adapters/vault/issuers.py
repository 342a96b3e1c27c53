"""The issuers of a multi-issuer PKI mount (Vault 1.11+, OpenBao): list them, read each one's
certificate and chain, and look up whether a certificate is revoked.

``LIST <mount>/issuers``, ``GET <mount>/issuer/<ref>/json`` and ``GET <mount>/cert/<serial>``
are unauthenticated paths: the agent's policy needs nothing for them. ``GET <mount>/issuer/<ref>``
(usage and revocation of the issuer) needs ``read`` and is used by ``validate --connect`` only.
"""

from __future__ import annotations

from typing import Any

from vault_bridge.adapters.vault.pki import PkiEndpoints
from vault_bridge.adapters.vault.transport import VaultTransport, answer_data
from vault_bridge.errors import VaultError, VaultPermissionError
from vault_bridge.models.certificates import split_pem_chain
from vault_bridge.models.vault import IssuerEntry, MountIssuers, PkiIssuer


class IssuerEndpoints:
    """One method per issuer endpoint, through the client's :class:`VaultTransport`."""

    def __init__(self, transport: VaultTransport, pki: PkiEndpoints) -> None:
        self.transport = transport
        self._pki = pki

    def list_issuers(self, mount: str) -> tuple[IssuerEntry, ...]:
        """LIST: /{mount}/issuers (unauthenticated) — every issuer of a multi-issuer mount.

        A Vault without multi-issuer support (before 1.11) answers 404: an empty tuple.
        """
        path = f"{mount}/issuers"
        try:
            resp = self.transport.call(
                "LIST",
                path,
                lambda: self.transport.hvac.adapter.list(url=f"/v1/{path}"),
                capability="list",
            )
        except VaultError as exc:
            if exc.status == 404 and not isinstance(exc, VaultPermissionError):
                return ()
            raise
        data = answer_data(resp, path)
        entries = IssuerEntry.list_from_vault(data)
        if not entries:
            # an answer without issuers is no proof that the mount has none: never guess
            raise VaultError(
                f"LIST {path} answered without issuer IDs",
                method="LIST",
                url=self.transport.url(path),
            )
        return entries

    def issuer(self, mount: str, ref: str) -> PkiIssuer:
        """GET: /{mount}/issuer/{ref}/json (unauthenticated) — the issuer's certificate and
        chain."""
        path = f"{mount}/issuer/{ref}/json"
        resp = self.transport.call(
            "GET",
            path,
            lambda: self.transport.hvac.adapter.get(url=f"/v1/{path}"),
            capability="read",
            not_found=f"no issuer {ref!r} on {mount}",
        )
        return self._issuer_from(mount, path, answer_data(resp, path))

    def read_issuer(self, mount: str, ref: str) -> PkiIssuer:
        """GET: /{mount}/issuer/{ref} — with its usage and revocation (``validate --connect``)."""
        path = f"{mount}/issuer/{ref}"
        resp = self.transport.call(
            "GET",
            path,
            lambda: self.transport.hvac.adapter.get(url=f"/v1/{path}"),
            capability="read",
            not_found=f"no issuer {ref!r} on {mount}",
        )
        return self._issuer_from(mount, path, answer_data(resp, path))

    def _issuer_from(self, mount: str, path: str, data: dict[str, Any]) -> PkiIssuer:
        raw = data.get("ca_chain") or []
        if isinstance(raw, list):
            raw = "\n".join(str(item) for item in raw)
        try:
            return PkiIssuer.from_vault(mount, data, split_pem_chain(str(raw)))
        except ValueError as exc:
            raise VaultError(
                f"{path} returned no usable certificate", method="GET", url=self.transport.url(path)
            ) from exc

    def mount_issuers(self, mount: str) -> MountIssuers:
        """Every issuer of ``mount`` with its chain: LIST /{mount}/issuers, then GET
        /{mount}/issuer/{id}/json for each. Without multi-issuer support (an empty list), the
        one CA of GET /{mount}/cert/ca_chain."""
        entries = self.list_issuers(mount)
        if not entries:
            # each CA of the chain may have signed a leaf (a root mount signs directly)
            pems = self._pki.ca_chain(mount)
            try:
                cas = tuple(
                    PkiIssuer.from_vault(mount, {"certificate": pem}, pems[index:])
                    for index, pem in enumerate(pems)
                )
            except ValueError as exc:
                path = f"{mount}/cert/ca_chain"
                raise VaultError(
                    f"{path} returned no usable certificate",
                    method="GET",
                    url=self.transport.url(path),
                ) from exc
            return MountIssuers(mount, cas, None)
        issuers = tuple(self.issuer(mount, entry.issuer_id) for entry in entries)
        default = next((e.issuer_id for e in entries if e.is_default), None)
        return MountIssuers(mount, issuers, default)

    def certificate_revoked(self, mount: str, serial: str) -> bool | None:
        """GET: /{mount}/cert/{serial} (unauthenticated) — whether Vault revoked it.

        True only on positive proof (a ``revocation_time`` after the epoch); None when Vault
        does not know the serial (a role with ``no_store``) or answers something unreadable.
        """
        path = f"{mount}/cert/{serial}"
        try:
            resp = self.transport.call(
                "GET",
                path,
                lambda: self.transport.hvac.adapter.get(url=f"/v1/{path}"),
                capability="read",
            )
        except VaultError as exc:
            if exc.status == 404:
                return None
            raise
        data = resp.get("data") if isinstance(resp, dict) else None
        if not isinstance(data, dict):
            return None
        when = data.get("revocation_time")
        if isinstance(when, bool) or not isinstance(when, int | float):
            return None
        return when > 0
