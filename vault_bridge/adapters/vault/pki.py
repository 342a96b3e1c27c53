"""The PKI secrets engine's endpoints: sign, issue, roles, the CA chain and revocation.

Secrets: an ``issue`` answer holds the private key; only the answer's shape (its keys) is
logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from vault_bridge.adapters.vault.transport import VaultTransport, answer_data
from vault_bridge.config.durations import format_duration
from vault_bridge.errors import VaultError
from vault_bridge.models.certificates import IssuedCertificate, split_pem_chain
from vault_bridge.models.vault import PkiRole

logger = logging.getLogger(__name__)


class PkiEndpoints:
    """One method per PKI endpoint, through the client's :class:`VaultTransport`."""

    def __init__(self, transport: VaultTransport) -> None:
        self.transport = transport

    @property
    def _pki(self) -> Any:
        return self.transport.hvac.secrets.pki

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
        """POST: /{mount}/sign/{role}, or /{mount}/issuer/{issuer_ref}/sign/{role} (the
        answer's ``data``, with ``lease_id`` if any)"""
        path = pki_path(mount, "sign", role, issuer_ref)
        params = cert_params(alt_names, ip_sans, ttl)
        if issuer_ref:
            body = {"csr": csr_pem, "common_name": common_name, **params}
            call: Callable[[], Any] = lambda: self.transport.hvac.write_data(path, data=body)  # noqa: E731
        else:
            call = lambda: self._pki.sign_certificate(  # noqa: E731
                name=role,
                csr=csr_pem,
                common_name=common_name,
                extra_params=params,
                mount_point=mount,
            )
        resp = self.transport.call("POST", path, call, capability="update")
        return _data_with_lease(resp, path)

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
        """POST: /{mount}/issue/{role}, or /{mount}/issuer/{issuer_ref}/issue/{role}"""
        path = pki_path(mount, "issue", role, issuer_ref)
        params = cert_params(alt_names, ip_sans, ttl)
        if issuer_ref:
            body = {"common_name": common_name, **params}
            call: Callable[[], Any] = lambda: self.transport.hvac.write_data(path, data=body)  # noqa: E731
        else:
            call = lambda: self._pki.generate_certificate(  # noqa: E731
                name=role, common_name=common_name, extra_params=params, mount_point=mount
            )
        resp = self.transport.call("POST", path, call, capability="update")
        # The answer holds the private key: only its shape may be logged.
        return IssuedCertificate.from_vault(_data_with_lease(resp, path))

    def read_role(self, mount: str, role: str) -> PkiRole:
        """GET: /{mount}/roles/{role}"""
        path = f"{mount}/roles/{role}"
        resp = self.transport.call(
            "GET",
            path,
            lambda: self._pki.read_role(name=role, mount_point=mount),
            capability="read",
            not_found=f"PKI role {path} does not exist",
        )
        return PkiRole.from_vault(mount, role, answer_data(resp, path))

    def write_role(self, mount: str, role: str, params: Mapping[str, Any]) -> None:
        """POST: /{mount}/roles/{role}"""
        path = f"{mount}/roles/{role}"
        self.transport.call(
            "POST",
            path,
            lambda: self.transport.hvac.write_data(path, data=dict(params)),
            capability="update",
        )

    def ca_chain(self, mount: str) -> list[str]:
        """GET: /{mount}/cert/ca_chain (issuing CA first, the root when the mount knows it)"""
        path = f"{mount}/cert/ca_chain"
        resp = self.transport.call(
            "GET",
            path,
            lambda: self._pki.read_certificate(serial="ca_chain", mount_point=mount),
            capability="read",
        )
        data = answer_data(resp, path)
        raw = data.get("ca_chain") or data.get("certificate") or ""
        if isinstance(raw, list):
            raw = "\n".join(str(item) for item in raw)
        pems = split_pem_chain(str(raw))
        if not pems:
            raise VaultError(
                f"{path} returned no certificates", method="GET", url=self.transport.url(path)
            )
        return pems

    def revoke(
        self, mount: str, *, serial: str | None = None, certificate: str | None = None
    ) -> None:
        """POST: /{mount}/revoke (by ``serial`` or by ``certificate`` PEM, exactly one)."""
        if (serial is None) == (certificate is None):
            raise ValueError("revoke needs exactly one of serial= or certificate=")
        path = f"{mount}/revoke"
        body = {"serial_number": serial} if serial is not None else {"certificate": certificate}
        self.transport.call(
            "POST",
            path,
            lambda: self.transport.hvac.adapter.post(url=f"/v1/{path}", json=body),
            capability="update",
        )
        logger.info("revoked certificate %s on %s", serial or "(by PEM)", mount)

    def read_urls(self, mount: str) -> dict[str, Any]:
        """GET: /{mount}/config/urls (issuing certificates, CRL and OCSP URLs)."""
        path = f"{mount}/config/urls"
        resp = self.transport.call(
            "GET", path, lambda: self.transport.hvac.read(path), capability="read"
        )
        return answer_data(resp, path)

    def write_urls(self, mount: str, urls: Mapping[str, Any]) -> None:
        """POST: /{mount}/config/urls (an admin operation: `vault-bridge vault-setup`)."""
        path = f"{mount}/config/urls"
        self.transport.call(
            "POST",
            path,
            lambda: self.transport.hvac.write_data(path, data=dict(urls)),
            capability="update",
        )


def pki_path(mount: str, verb: str, role: str, issuer_ref: str | None) -> str:
    """``<mount>/<verb>/<role>``, or through the chosen issuer:
    ``<mount>/issuer/<ref>/<verb>/<role>``."""
    if issuer_ref:
        return f"{mount}/issuer/{issuer_ref}/{verb}/{role}"
    return f"{mount}/{verb}/{role}"


def cert_params(
    alt_names: Sequence[str], ip_sans: Sequence[str], ttl: timedelta | str | None
) -> dict[str, Any]:
    """The body of a sign or issue request, beside the CSR and the common name."""
    params: dict[str, Any] = {"format": "pem", "remove_roots_from_chain": False}
    if alt_names:
        params["alt_names"] = ",".join(alt_names)
    if ip_sans:
        params["ip_sans"] = ",".join(ip_sans)
    if ttl:  # Vault's duration text ("720h"); a timedelta is written in that form
        params["ttl"] = format_duration(ttl) if isinstance(ttl, timedelta) else ttl
    return params


def _data_with_lease(resp: Any, path: str) -> dict[str, Any]:
    data = dict(answer_data(resp, path))
    logger.debug("%s answered with keys %s", path, sorted(data))
    lease = resp.get("lease_id")
    if lease:
        data["lease_id"] = lease
    return data
