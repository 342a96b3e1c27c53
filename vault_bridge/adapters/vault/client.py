"""The one adapter for Vault (or OpenBao): :class:`VaultClient`.

It puts together the parts of :mod:`vault_bridge.adapters.vault`: the HTTP transport and its
error table (:mod:`~vault_bridge.adapters.vault.transport`), login and token upkeep
(:mod:`~vault_bridge.adapters.vault.auth`) and the PKI endpoints
(:mod:`~vault_bridge.adapters.vault.pki`); the KV read and the health check are here. Every
public method is one endpoint and its docstring names the verb and the path, as in hvac's own
docstrings.

Secrets: the Vault token, AppRole secret IDs, Kubernetes JWTs and private keys are never
logged nor put into exception messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import requests

from vault_bridge.adapters.vault.auth import TokenUpkeep
from vault_bridge.adapters.vault.issuers import IssuerEndpoints
from vault_bridge.adapters.vault.pki import PkiEndpoints
from vault_bridge.adapters.vault.transport import (
    VaultTransport,
    answer_data,
)
from vault_bridge.adapters.vault.transport import (
    is_cert_verification_error as _is_cert_verification_error,
)
from vault_bridge.decisions.token import RENEW_FRACTION, TokenAction, token_action
from vault_bridge.errors import VaultError, VaultUnavailableError
from vault_bridge.models.certificates import IssuedCertificate
from vault_bridge.models.times import utc_now
from vault_bridge.models.vault import (
    DEFAULT_K8S_JWT,
    AppRoleAuth,
    AuthMethod,
    CertAuth,
    IssuerEntry,
    KubernetesAuth,
    MountIssuers,
    PkiIssuer,
    PkiRole,
    TokenAuth,
    TokenInfo,
)

__all__ = [
    "DEFAULT_K8S_JWT",
    "RENEW_FRACTION",
    "AppRoleAuth",
    "AuthMethod",
    "CertAuth",
    "IssuerEntry",
    "KubernetesAuth",
    "MountIssuers",
    "PkiIssuer",
    "PkiRole",
    "TokenAction",
    "TokenAuth",
    "TokenInfo",
    "VaultClient",
    "_is_cert_verification_error",
    "token_action",
]


class VaultClient:
    """Vault over hvac: log in, keep the token alive, sign and issue certificates.

    Use as a context manager or call :meth:`close` to close the HTTP session.
    """

    def __init__(
        self,
        address: str,
        *,
        auth: AuthMethod,
        ca_cert: str | None = None,
        namespace: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.address = address.rstrip("/")
        self.auth = auth
        self.ca_cert = ca_cert
        self.namespace = namespace
        cert = (str(auth.cert_file), str(auth.key_file)) if isinstance(auth, CertAuth) else None
        self._transport = VaultTransport(
            self.address,
            ca_cert=ca_cert,
            namespace=namespace,
            timeout=timeout,
            client_cert=cert,
        )
        self._token = TokenUpkeep(self._transport, auth, clock=clock)
        self._pki = PkiEndpoints(self._transport)
        self._issuers = IssuerEndpoints(self._transport, self._pki)

    def __repr__(self) -> str:
        return f"VaultClient({self.address!r}, auth={type(self.auth).__name__})"

    def close(self) -> None:
        """Close the HTTP session."""
        self._transport.close()

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _hvac(self) -> Any:
        return self._transport.hvac

    @property
    def request_count(self) -> int:
        """HTTP requests sent so far, failed connection attempts included."""
        return self._transport.request_count

    @property
    def token_expires_at(self) -> datetime | None:
        """When the current token expires (None: not logged in, or it never expires)."""
        info = self._token.info
        return info.expire_time if info else None

    @property
    def token_info(self) -> TokenInfo | None:
        """What the last login, lookup or renewal said about the token."""
        return self._token.info

    def _call(
        self,
        verb: str,
        path: str,
        fn: Callable[[], Any],
        *,
        capability: str | None,
        not_found: str | None = None,
    ) -> Any:
        return self._transport.call(verb, path, fn, capability=capability, not_found=not_found)

    # -- tokens (vault_bridge.adapters.vault.auth) ------------------------------------------

    def login(self) -> TokenInfo:
        """Log in with the configured method and remember the token.

        ``TokenAuth``: GET /auth/token/lookup-self with the token from the file or $VAULT_TOKEN.
        Other methods: POST /auth/{mount}/login.
        """
        return self._token.login()

    def lookup_self(self) -> TokenInfo:
        """GET: /auth/token/lookup-self"""
        return self._token.lookup_self()

    def renew_self(self) -> TokenInfo:
        """POST: /auth/token/renew-self"""
        return self._token.renew_self()

    def ensure_token(self) -> TokenInfo:
        """Make sure there is a usable token: log in (POST /auth/{mount}/login), renew (POST
        /auth/token/renew-self) or do nothing; after a 403, GET /auth/token/lookup-self first.
        """
        return self._token.ensure_token()

    # -- PKI (vault_bridge.adapters.vault.pki) -----------------------------------------------

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
        """POST: /{mount}/sign/{role}, or /{mount}/issuer/{issuer_ref}/sign/{role}

        Returns the answer's ``data`` (with ``lease_id`` when the role makes leases); the
        caller builds the :class:`IssuedCertificate` with its local private key. With Vault's
        role defaults (``use_csr_common_name`` and ``use_csr_sans`` true) the subject and SANs
        come from the CSR and ``common_name``/``alt_names``/``ip_sans`` are not used: put them
        into the CSR too.
        """
        return self._pki.sign(
            mount,
            role,
            csr_pem,
            common_name=common_name,
            alt_names=alt_names,
            ip_sans=ip_sans,
            ttl=ttl,
            issuer_ref=issuer_ref,
        )

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
        return self._pki.issue(
            mount,
            role,
            common_name=common_name,
            alt_names=alt_names,
            ip_sans=ip_sans,
            ttl=ttl,
            issuer_ref=issuer_ref,
        )

    def read_role(self, mount: str, role: str) -> PkiRole:
        """GET: /{mount}/roles/{role}"""
        return self._pki.read_role(mount, role)

    def write_role(self, mount: str, role: str, params: Mapping[str, Any]) -> None:
        """POST: /{mount}/roles/{role} (an admin operation: `vault-bridge vault-setup`)"""
        self._pki.write_role(mount, role, params)

    def ca_chain(self, mount: str) -> list[str]:
        """GET: /{mount}/cert/ca_chain

        The PEMs of the issuing CA's chain, issuing CA first, the root included when the mount
        knows it.
        """
        return self._pki.ca_chain(mount)

    def revoke(
        self, mount: str, *, serial: str | None = None, certificate: str | None = None
    ) -> None:
        """POST: /{mount}/revoke (by ``serial`` or by ``certificate`` PEM, exactly one)."""
        self._pki.revoke(mount, serial=serial, certificate=certificate)

    # -- issuers (vault_bridge.adapters.vault.issuers) ---------------------------------------

    def list_issuers(self, mount: str) -> tuple[IssuerEntry, ...]:
        """LIST: /{mount}/issuers (unauthenticated); empty on a Vault without multi-issuer
        support (404)."""
        return self._issuers.list_issuers(mount)

    def issuer(self, mount: str, ref: str) -> PkiIssuer:
        """GET: /{mount}/issuer/{ref}/json (unauthenticated): certificate and chain."""
        return self._issuers.issuer(mount, ref)

    def read_issuer(self, mount: str, ref: str) -> PkiIssuer:
        """GET: /{mount}/issuer/{ref}: with its usage and revocation (``validate --connect``)."""
        return self._issuers.read_issuer(mount, ref)

    def mount_issuers(self, mount: str) -> MountIssuers:
        """LIST: /{mount}/issuers, then GET: /{mount}/issuer/{id}/json for each (without
        multi-issuer support, GET: /{mount}/cert/ca_chain)."""
        return self._issuers.mount_issuers(mount)

    def certificate_revoked(self, mount: str, serial: str) -> bool | None:
        """GET: /{mount}/cert/{serial} (unauthenticated): True only on positive proof."""
        return self._issuers.certificate_revoked(mount, serial)

    # -- KV and health ----------------------------------------------------------------------

    def read_urls(self, mount: str) -> dict[str, Any]:
        """GET: /{mount}/config/urls (issuing certificates, CRL and OCSP URLs)."""
        return self._pki.read_urls(mount)

    def write_urls(self, mount: str, urls: Mapping[str, Any]) -> None:
        """POST: /{mount}/config/urls (an admin operation: `vault-bridge vault-setup`)."""
        self._pki.write_urls(mount, urls)

    def read_kv(self, mount: str, path: str, key: str) -> str:
        """GET: /{mount}/data/{path} (KV version 2); returns the value of ``key``.

        Used for a cluster password kept in Vault; the value is never logged.
        """
        api_path = f"{mount}/data/{path}"
        self.ensure_token()
        resp = self._call(
            "GET",
            api_path,
            lambda: self._hvac.secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=True
            ),
            capability="read",
            not_found=f"no secret at {api_path}",
        )
        data = answer_data(resp, api_path).get("data") or {}
        value = data.get(key) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise VaultError(f"the secret at {api_path} has no key {key!r}")
        return value

    def health(self) -> bool:
        """GET: /sys/health — True when Vault is initialized and unsealed (standbys included).

        Unreachable counts as unhealthy; a TLS verification failure still raises.
        """
        path = "sys/health"
        try:
            resp = self._call(
                "GET",
                path,
                lambda: self._hvac.sys.read_health_status(method="GET", standby_ok=True),
                capability=None,
            )
        except VaultUnavailableError:
            return False
        if isinstance(resp, requests.Response):  # hvac returns non-200 answers unparsed
            try:
                body = resp.json()
            except ValueError:
                return False
        else:
            body = resp
        return bool(body.get("initialized")) and not bool(body.get("sealed", True))
