"""The one adapter for Vault (or OpenBao): authentication, token upkeep and the PKI endpoints.

Every public method is one endpoint and its docstring names the verb and the path, as in
hvac's own docstrings. Errors from hvac and requests are re-raised ``from`` the original as
:class:`~vault_bridge.errors.VaultPermissionError` (403), :class:`VaultUnavailableError`
(cannot connect, sealed, 5xx gateway/down) or :class:`VaultError` (anything else), each with
``method``, ``url`` and ``status``.

TLS verification is always on. ``ca_cert`` pins the CA: it is handed to requests per request,
which is the one place where it beats ``REQUESTS_CA_BUNDLE`` (requests lets that variable
override a ``Session.verify`` of ``True`` but not a ``verify=`` passed with the request).

Secrets: the Vault token, AppRole secret IDs, Kubernetes JWTs and private keys are never
logged nor put into exception messages. hvac keeps the token in a header, not in URLs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import hvac
import hvac.adapters
import hvac.exceptions
import requests

from vault_bridge.decisions.token import RENEW_FRACTION, TokenAction, token_action
from vault_bridge.errors import (
    ConfigError,
    VaultError,
    VaultPermissionError,
    VaultUnavailableError,
)
from vault_bridge.models.certificates import IssuedCertificate, split_pem_chain
from vault_bridge.models.vault import (
    DEFAULT_K8S_JWT,
    AppRoleAuth,
    AuthMethod,
    CertAuth,
    KubernetesAuth,
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
    "KubernetesAuth",
    "PkiRole",
    "TokenAction",
    "TokenAuth",
    "TokenInfo",
    "VaultClient",
    "token_action",
]

logger = logging.getLogger(__name__)

# Statuses after which trying again later can succeed: rate limited, bad gateway, sealed or
# down, gateway timeout.
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


def _utc_now() -> datetime:
    return datetime.now(UTC)


# -- HTTP plumbing ---------------------------------------------------------------------------


class _CountingSession(requests.Session):
    """A session that counts the requests it sends (failed connection attempts included)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent += 1
        return super().send(request, **kwargs)


class _StatusAdapter(hvac.adapters.JSONAdapter):  # type: ignore[misc]
    """hvac's JSON adapter, with the HTTP status attached to the exceptions it raises."""

    def _raise_for_error(self, method: str, url: str, response: requests.Response) -> None:
        try:
            super()._raise_for_error(method, url, response)
        except hvac.exceptions.VaultError as exc:
            exc.status_code = response.status_code
            raise


def _is_cert_verification_error(exc: BaseException) -> bool:
    """Whether a requests SSLError was a failed certificate check (not a dropped handshake)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return True
        todo.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _vault_errors(exc: Any) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        return "; ".join(str(e) for e in errors)
    text = str(exc.args[0]) if exc.args and exc.args[0] else ""
    return text.strip()[:300]


def _fingerprint(value: str) -> str:
    """A hash to notice a changed secret without keeping or logging the secret itself."""
    return hashlib.sha256(value.encode()).hexdigest()


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
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.address = address.rstrip("/")
        self.auth = auth
        self.ca_cert = ca_cert
        self.namespace = namespace
        self._clock = clock
        # Verification always on; a pinned CA is a path, passed with every request (see the
        # module docstring for why this beats REQUESTS_CA_BUNDLE).
        self._verify: str | bool = ca_cert if ca_cert else True
        self._session = _CountingSession()
        # hvac copies a given session's verify and cert into the kwargs of every request.
        self._session.verify = self._verify
        cert = (str(auth.cert_file), str(auth.key_file)) if isinstance(auth, CertAuth) else None
        self._session.cert = cert
        self._hvac: Any = hvac.Client(
            url=self.address,
            token="",  # "" and not None: hvac would otherwise read $VAULT_TOKEN / ~/.vault-token
            cert=cert,
            verify=self._verify,
            timeout=timeout,
            session=self._session,
            adapter=_StatusAdapter,
            namespace=namespace or None,
        )
        self._info: TokenInfo | None = None
        self._obtained_at: datetime | None = None
        self._granted_ttl = 0
        self._renewal_exhausted = False
        self._token_suspect = False
        self._token_source_stamp: tuple[int, int, int] | None = None
        self._token_fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"VaultClient({self.address!r}, auth={type(self.auth).__name__})"

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

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
    def request_count(self) -> int:
        """HTTP requests sent so far, failed connection attempts included."""
        return self._session.sent

    @property
    def token_expires_at(self) -> datetime | None:
        """When the current token expires (None: not logged in, or it never expires)."""
        return self._info.expire_time if self._info else None

    @property
    def token_info(self) -> TokenInfo | None:
        """What the last login, lookup or renewal said about the token."""
        return self._info

    # -- error mapping ---------------------------------------------------------------------

    def _call(
        self,
        verb: str,
        path: str,
        fn: Callable[[], Any],
        *,
        capability: str | None,
        not_found: str | None = None,
    ) -> Any:
        """Run one hvac call for ``verb path`` and map what goes wrong to our errors."""
        url = f"{self.address}/v1/{path}"
        try:
            return fn()
        except hvac.exceptions.VaultError as exc:
            status: int | None = getattr(exc, "status_code", None)
            detail = _vault_errors(exc)
            if status == 403:
                self._token_suspect = True
                if path.startswith("auth/token/") and path.endswith("-self"):
                    # usually a bad token (the default policy grants these paths to any token)
                    message = (
                        f"the Vault token was rejected on {path}: expired or revoked, or its "
                        f"policy lacks {capability!r} there"
                    )
                elif capability:
                    message = f"permission denied: the policy needs {capability!r} on {path}"
                else:
                    message = f"permission denied for {path}"
                    if detail and detail != "permission denied":
                        message += f": {detail}"
                raise VaultPermissionError(message, method=verb, url=url, status=403) from exc
            if status in _UNAVAILABLE_STATUSES:
                message = f"Vault is unavailable: {detail or 'HTTP ' + str(status)}"
                raise VaultUnavailableError(message, method=verb, url=url, status=status) from exc
            if status == 404 and not_found:
                message = not_found + (f" ({detail})" if detail else "")
                raise VaultError(message, method=verb, url=url, status=404) from exc
            message = f"Vault refused the request: {detail}" if detail else "Vault request failed"
            raise VaultError(message, method=verb, url=url, status=status) from exc
        except requests.exceptions.SSLError as exc:
            if _is_cert_verification_error(exc):
                trusted = f"ca_cert {self.ca_cert}" if self.ca_cert else "the default CA bundle"
                message = f"TLS verification of Vault's certificate failed against {trusted}"
                raise VaultError(message, method=verb, url=url) from exc
            raise VaultUnavailableError(
                f"TLS connection to Vault failed: {exc}", method=verb, url=url
            ) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise VaultUnavailableError(
                f"cannot reach Vault: {type(exc).__name__}", method=verb, url=url
            ) from exc
        except requests.RequestException as exc:
            raise VaultError(f"request to Vault failed: {exc}", method=verb, url=url) from exc
        except OSError as exc:  # requests: the ca_cert or client certificate files are missing
            raise VaultError(f"cannot use the TLS files: {exc}", method=verb, url=url) from exc

    # -- tokens ----------------------------------------------------------------------------

    def _remember(self, info: TokenInfo, *, granted_ttl: int | None = None) -> TokenInfo:
        self._info = info
        self._obtained_at = self._clock()
        if granted_ttl is not None:
            self._granted_ttl = granted_ttl
        self._token_suspect = False
        return info

    def _info_from_auth(self, auth: dict[str, Any]) -> TokenInfo:
        ttl = int(auth.get("lease_duration") or 0)
        policies = auth.get("policies") or auth.get("token_policies") or []
        return TokenInfo(
            accessor=str(auth.get("accessor", "")),
            ttl_seconds=ttl,
            renewable=bool(auth.get("renewable", False)),
            expire_time=self._clock() + timedelta(seconds=ttl) if ttl > 0 else None,
            policies=tuple(str(p) for p in policies),
        )

    def login(self) -> TokenInfo:
        """Log in with the configured method and remember the token.

        ``TokenAuth``: GET /auth/token/lookup-self with the token from the file or $VAULT_TOKEN.
        Other methods: POST /auth/{mount}/login.
        """
        auth = self.auth
        self._renewal_exhausted = False
        if isinstance(auth, TokenAuth):
            self._hvac.token = self._read_token_source(auth)
            try:
                info = self.lookup_self()
            except VaultPermissionError as exc:
                source = auth.token_file or "$VAULT_TOKEN"
                raise VaultPermissionError(
                    f"the token from {source} was rejected (expired, revoked or unknown)",
                    method=exc.method,
                    url=exc.url,
                    status=exc.status,
                ) from exc
            logger.info("using Vault token (accessor %s, ttl %ss)", info.accessor, info.ttl_seconds)
            return info
        self._hvac.token = None  # log in without sending an old, possibly expired, token
        if isinstance(auth, AppRoleAuth):
            # The secret ID goes into the request body only: never log it.
            secret_id = _read_secret_file(auth.secret_id_file, "AppRole secret ID")
            path = f"auth/{auth.mount}/login"
            resp = self._call(
                "POST",
                path,
                lambda: self._hvac.auth.approle.login(
                    role_id=auth.role_id, secret_id=secret_id, mount_point=auth.mount
                ),
                capability=None,
            )
        elif isinstance(auth, KubernetesAuth):
            # The service-account JWT is a credential: never log it.
            jwt = _read_secret_file(auth.jwt_file, "Kubernetes service account token")
            path = f"auth/{auth.mount}/login"
            resp = self._call(
                "POST",
                path,
                lambda: self._hvac.auth.kubernetes.login(
                    role=auth.role, jwt=jwt, mount_point=auth.mount
                ),
                capability=None,
            )
        else:
            path = f"auth/{auth.mount}/login"
            body = {"name": auth.name} if auth.name else {}
            # The client certificate is presented by the session (cert=...) in the handshake.
            resp = self._call(
                "POST",
                path,
                lambda: self._hvac.adapter.login(url=f"/v1/{path}", json=body),
                capability=None,
            )
        info = self._info_from_auth(resp["auth"])
        logger.info(
            "logged in to Vault with %s (accessor %s, ttl %ss)",
            type(auth).__name__,
            info.accessor,
            info.ttl_seconds,
        )
        return self._remember(info, granted_ttl=info.ttl_seconds)

    def lookup_self(self) -> TokenInfo:
        """GET: /auth/token/lookup-self"""
        path = "auth/token/lookup-self"
        resp = self._call(
            "GET", path, lambda: self._hvac.auth.token.lookup_self(), capability="read"
        )
        data = resp["data"]
        ttl = int(data.get("ttl") or 0)
        info = TokenInfo(
            accessor=str(data.get("accessor", "")),
            ttl_seconds=ttl,
            renewable=bool(data.get("renewable", False)),
            expire_time=self._clock() + timedelta(seconds=ttl) if ttl > 0 else None,
            policies=tuple(str(p) for p in data.get("policies") or []),
        )
        return self._remember(info, granted_ttl=int(data.get("creation_ttl") or ttl))

    def renew_self(self) -> TokenInfo:
        """POST: /auth/token/renew-self"""
        path = "auth/token/renew-self"
        resp = self._call(
            "POST", path, lambda: self._hvac.auth.token.renew_self(), capability="update"
        )
        info = self._info_from_auth(resp["auth"])
        # Vault caps a renewal at the token's max TTL: a shorter TTL than granted means the
        # next renewals cannot extend it any more, so the next due point logs in instead.
        self._renewal_exhausted = 0 < info.ttl_seconds < self._granted_ttl
        logger.info("renewed Vault token (accessor %s, ttl %ss)", info.accessor, info.ttl_seconds)
        return self._remember(info)

    def ensure_token(self) -> TokenInfo:
        """Make sure there is a usable token: log in, renew or do nothing.

        Logs in when never logged in or when the token source (TokenAuth) changed; checks the
        token after a 403 and logs in again when it was rejected; renews at 2/3 of its TTL when
        renewable and logs in again when the renewal fails or cannot extend it.
        """
        if self._info is None or self._obtained_at is None:
            return self.login()
        auth = self.auth
        source_changed = isinstance(auth, TokenAuth) and self._token_source_changed(auth)
        if source_changed:
            logger.info("the Vault token source changed: using the new token")
            return self.login()
        if self._token_suspect:
            try:
                return self.lookup_self()
            except VaultUnavailableError:
                raise
            except VaultError:
                logger.warning("the Vault token was rejected: logging in again")
                return self.login()
        action = token_action(
            now=self._clock(),
            obtained_at=self._obtained_at,
            ttl_seconds=self._info.ttl_seconds,
            renewable=self._info.renewable and not self._renewal_exhausted,
            relogin_useful=not isinstance(auth, TokenAuth),
        )
        if action == "renew":
            try:
                return self.renew_self()
            except VaultUnavailableError:
                raise
            except VaultError as exc:
                logger.warning("renewing the Vault token failed (%s): logging in again", exc)
                return self.login()
        if action == "login":
            return self.login()
        return self._info

    def _read_token_source(self, auth: TokenAuth) -> str:
        # The token itself is never logged; only a fingerprint is kept to notice changes.
        if auth.token_file is not None:
            self._token_source_stamp = _stamp(auth.token_file)
            token = _read_secret_file(auth.token_file, "Vault token")
        else:
            token = os.environ.get("VAULT_TOKEN", "").strip()
            if not token:
                raise ConfigError("no Vault token: set VAULT_TOKEN or configure a token file")
        self._token_fingerprint = _fingerprint(token)
        return token

    def _token_source_changed(self, auth: TokenAuth) -> bool:
        if auth.token_file is None:
            token = os.environ.get("VAULT_TOKEN", "").strip()
            return bool(token) and _fingerprint(token) != self._token_fingerprint
        try:
            stamp = _stamp(auth.token_file)
        except ConfigError:
            return False  # gone for the moment (being replaced): keep the token we have
        if stamp == self._token_source_stamp:
            return False
        self._token_source_stamp = stamp
        try:
            token = _read_secret_file(auth.token_file, "Vault token")
        except ConfigError:
            return False
        return _fingerprint(token) != self._token_fingerprint

    # -- PKI -------------------------------------------------------------------------------

    def sign(
        self,
        mount: str,
        role: str,
        csr_pem: str,
        *,
        common_name: str,
        alt_names: Sequence[str] = (),
        ip_sans: Sequence[str] = (),
        ttl: str | None = None,
    ) -> dict[str, Any]:
        """POST: /{mount}/sign/{role}

        Returns the answer's ``data`` (with ``lease_id`` when the role makes leases); the
        caller builds the :class:`IssuedCertificate` with its local private key. With Vault's
        role defaults (``use_csr_common_name`` and ``use_csr_sans`` true) the subject and SANs
        come from the CSR and ``common_name``/``alt_names``/``ip_sans`` are not used: put them
        into the CSR too.
        """
        path = f"{mount}/sign/{role}"
        params = _cert_params(alt_names, ip_sans, ttl)
        resp = self._call(
            "POST",
            path,
            lambda: self._hvac.secrets.pki.sign_certificate(
                name=role,
                csr=csr_pem,
                common_name=common_name,
                extra_params=params,
                mount_point=mount,
            ),
            capability="update",
        )
        return _data_with_lease(resp, path)

    def issue(
        self,
        mount: str,
        role: str,
        *,
        common_name: str,
        alt_names: Sequence[str] = (),
        ip_sans: Sequence[str] = (),
        ttl: str | None = None,
    ) -> IssuedCertificate:
        """POST: /{mount}/issue/{role}"""
        path = f"{mount}/issue/{role}"
        params = _cert_params(alt_names, ip_sans, ttl)
        resp = self._call(
            "POST",
            path,
            lambda: self._hvac.secrets.pki.generate_certificate(
                name=role, common_name=common_name, extra_params=params, mount_point=mount
            ),
            capability="update",
        )
        # The answer holds the private key: only its shape may be logged.
        return IssuedCertificate.from_vault(_data_with_lease(resp, path))

    def read_role(self, mount: str, role: str) -> PkiRole:
        """GET: /{mount}/roles/{role}"""
        path = f"{mount}/roles/{role}"
        resp = self._call(
            "GET",
            path,
            lambda: self._hvac.secrets.pki.read_role(name=role, mount_point=mount),
            capability="read",
            not_found=f"PKI role {path} does not exist",
        )
        return PkiRole.from_vault(mount, role, _data(resp, path))

    def write_role(self, mount: str, role: str, params: Mapping[str, Any]) -> None:
        """POST: /{mount}/roles/{role} (an admin operation: `vault-bridge vault-setup`)"""
        path = f"{mount}/roles/{role}"
        self._call(
            "POST",
            path,
            lambda: self._hvac.write_data(path, data=dict(params)),
            capability="update",
        )

    def ca_chain(self, mount: str) -> list[str]:
        """GET: /{mount}/cert/ca_chain

        The PEMs of the issuing CA's chain, issuing CA first, the root included when the mount
        knows it.
        """
        path = f"{mount}/cert/ca_chain"
        resp = self._call(
            "GET",
            path,
            lambda: self._hvac.secrets.pki.read_certificate(serial="ca_chain", mount_point=mount),
            capability="read",
        )
        data = _data(resp, path)
        raw = data.get("ca_chain") or data.get("certificate") or ""
        if isinstance(raw, list):
            raw = "\n".join(str(item) for item in raw)
        pems = split_pem_chain(str(raw))
        if not pems:
            raise VaultError(f"{path} returned no certificates", method="GET", url=self._url(path))
        return pems

    def list_issuers(self, mount: str) -> list[str]:
        """LIST: /{mount}/issuers -> the issuer IDs of the mount (an unauthenticated path)."""
        path = f"{mount}/issuers"
        resp = self._call(
            "LIST",
            path,
            lambda: self._hvac.adapter.list(url=f"/v1/{path}"),
            capability="list",
        )
        keys = _data(resp, path).get("keys") or []
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise VaultError(f"{path} returned a malformed list of issuers", url=self._url(path))
        return list(keys)

    def read_issuer(self, mount: str, issuer: str) -> PkiIssuer:
        """GET: /{mount}/issuer/{issuer}/json -> the issuer's certificate and chain
        (an unauthenticated path)."""
        path = f"{mount}/issuer/{issuer}/json"
        resp = self._call(
            "GET",
            path,
            lambda: self._hvac.adapter.get(url=f"/v1/{path}"),
            capability="read",
            not_found=f"no issuer {issuer} on {mount}",
        )
        data = _data(resp, path)
        certificate = split_pem_chain(str(data.get("certificate") or ""))
        chain_raw = data.get("ca_chain") or []
        if isinstance(chain_raw, str):
            chain_raw = [chain_raw]
        chain = [pem for item in chain_raw for pem in split_pem_chain(str(item))]
        if len(certificate) != 1:
            raise VaultError(f"{path} returned no issuer certificate", url=self._url(path))
        return PkiIssuer(issuer_id=issuer, certificate=certificate[0], ca_chain=tuple(chain))

    def read_urls(self, mount: str) -> dict[str, Any]:
        """GET: /{mount}/config/urls (issuing certificates, CRL and OCSP URLs)."""
        path = f"{mount}/config/urls"
        resp = self._call("GET", path, lambda: self._hvac.read(path), capability="read")
        return _data(resp, path)

    def write_urls(self, mount: str, urls: Mapping[str, Any]) -> None:
        """POST: /{mount}/config/urls (an admin operation: `vault-bridge vault-setup`)."""
        path = f"{mount}/config/urls"
        self._call(
            "POST",
            path,
            lambda: self._hvac.write_data(path, data=dict(urls)),
            capability="update",
        )

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
        data = _data(resp, api_path).get("data") or {}
        value = data.get(key) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise VaultError(f"the secret at {api_path} has no key {key!r}")
        return value

    def revoke(
        self, mount: str, *, serial: str | None = None, certificate: str | None = None
    ) -> None:
        """POST: /{mount}/revoke (by ``serial`` or by ``certificate`` PEM, exactly one)."""
        if (serial is None) == (certificate is None):
            raise ValueError("revoke needs exactly one of serial= or certificate=")
        path = f"{mount}/revoke"
        body = {"serial_number": serial} if serial is not None else {"certificate": certificate}
        self._call(
            "POST",
            path,
            lambda: self._hvac.adapter.post(url=f"/v1/{path}", json=body),
            capability="update",
        )
        logger.info("revoked certificate %s on %s", serial or "(by PEM)", mount)

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

    def _url(self, path: str) -> str:
        return f"{self.address}/v1/{path}"


# -- helpers ---------------------------------------------------------------------------------


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read_secret_file(path: Path, what: str) -> str:
    """Read a credential file; errors name the file, never its content."""
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"the {what} file {path} is empty")
    return value


def _cert_params(
    alt_names: Sequence[str], ip_sans: Sequence[str], ttl: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"format": "pem", "remove_roots_from_chain": False}
    if alt_names:
        params["alt_names"] = ",".join(alt_names)
    if ip_sans:
        params["ip_sans"] = ",".join(ip_sans)
    if ttl:
        params["ttl"] = ttl
    return params


def _data(resp: Any, path: str) -> dict[str, Any]:
    data = resp.get("data") if isinstance(resp, dict) else None
    if not isinstance(data, dict):
        raise VaultError(f"{path} answered without data")
    return data


def _data_with_lease(resp: Any, path: str) -> dict[str, Any]:
    data = dict(_data(resp, path))
    logger.debug("%s answered with keys %s", path, sorted(data))
    lease = resp.get("lease_id")
    if lease:
        data["lease_id"] = lease
    return data
