"""Logging in to Vault and keeping the token alive: :class:`TokenUpkeep`.

When to renew or log in again is decided by :func:`vault_bridge.decisions.token.token_action`;
this module does it. Secrets: the Vault token, AppRole secret IDs and Kubernetes JWTs are never
logged nor put into exception messages; only a fingerprint of the token is kept, to notice a
changed token file. hvac keeps the token in a header, not in URLs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vault_bridge.adapters.vault.transport import VaultTransport
from vault_bridge.decisions.token import token_action
from vault_bridge.errors import (
    ConfigError,
    VaultError,
    VaultPermissionError,
    VaultUnavailableError,
)
from vault_bridge.models.vault import (
    AppRoleAuth,
    AuthMethod,
    CertAuth,
    KubernetesAuth,
    TokenAuth,
    TokenInfo,
)

logger = logging.getLogger(__name__)


def _fingerprint(value: str) -> str:
    """A hash to notice a changed secret without keeping or logging the secret itself."""
    return hashlib.sha256(value.encode()).hexdigest()


class TokenUpkeep:
    """The token of one Vault client: login with the configured method, lookup, renewal."""

    def __init__(
        self, transport: VaultTransport, auth: AuthMethod, *, clock: Callable[[], datetime]
    ) -> None:
        self.transport = transport
        self.auth = auth
        self._clock = clock
        self.info: TokenInfo | None = None
        self._obtained_at: datetime | None = None
        self._granted_ttl = 0
        self._renewal_exhausted = False
        self._token_source_stamp: tuple[int, int, int] | None = None
        self._token_fingerprint: str | None = None

    @property
    def _hvac(self) -> Any:
        return self.transport.hvac

    def _remember(self, info: TokenInfo, *, granted_ttl: int | None = None) -> TokenInfo:
        self.info = info
        self._obtained_at = self._clock()
        if granted_ttl is not None:
            self._granted_ttl = granted_ttl
        self.transport.forbidden = False
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

    # -- endpoints -------------------------------------------------------------------------

    def login(self) -> TokenInfo:
        """Log in with the configured method and remember the token.

        ``TokenAuth``: GET /auth/token/lookup-self with the token from the file or $VAULT_TOKEN.
        Other methods: POST /auth/{mount}/login.
        """
        auth = self.auth
        self._renewal_exhausted = False
        if isinstance(auth, TokenAuth):
            return self._use_token(auth)
        self._hvac.token = None  # log in without sending an old, possibly expired, token
        resp = self._method_login(auth)
        info = self._info_from_auth(resp["auth"])
        logger.info(
            "logged in to Vault with %s (accessor %s, ttl %ss)",
            type(auth).__name__,
            info.accessor,
            info.ttl_seconds,
        )
        return self._remember(info, granted_ttl=info.ttl_seconds)

    def _use_token(self, auth: TokenAuth) -> TokenInfo:
        """GET: /auth/token/lookup-self with the token from the file or $VAULT_TOKEN."""
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

    def _method_login(self, auth: AppRoleAuth | KubernetesAuth | CertAuth) -> Any:
        """POST: /auth/{mount}/login for AppRole, Kubernetes or cert auth."""
        path = f"auth/{auth.mount}/login"
        call = self._hvac.auth
        if isinstance(auth, AppRoleAuth):
            # The secret ID goes into the request body only: never log it.
            secret_id = _read_secret_file(auth.secret_id_file, "AppRole secret ID")
            return self.transport.call(
                "POST",
                path,
                lambda: call.approle.login(
                    role_id=auth.role_id, secret_id=secret_id, mount_point=auth.mount
                ),
                capability=None,
            )
        if isinstance(auth, KubernetesAuth):
            # The service-account JWT is a credential: never log it.
            jwt = _read_secret_file(auth.jwt_file, "Kubernetes service account token")
            return self.transport.call(
                "POST",
                path,
                lambda: call.kubernetes.login(role=auth.role, jwt=jwt, mount_point=auth.mount),
                capability=None,
            )
        body = {"name": auth.name} if auth.name else {}
        # The client certificate is presented by the session (cert=...) in the handshake.
        return self.transport.call(
            "POST",
            path,
            lambda: self._hvac.adapter.login(url=f"/v1/{path}", json=body),
            capability=None,
        )

    def lookup_self(self) -> TokenInfo:
        """GET: /auth/token/lookup-self"""
        path = "auth/token/lookup-self"
        resp = self.transport.call(
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
        resp = self.transport.call(
            "POST", path, lambda: self._hvac.auth.token.renew_self(), capability="update"
        )
        info = self._info_from_auth(resp["auth"])
        # Vault caps a renewal at the token's max TTL: a shorter TTL than granted means the
        # next renewals cannot extend it any more, so the next due point logs in instead.
        self._renewal_exhausted = 0 < info.ttl_seconds < self._granted_ttl
        logger.info("renewed Vault token (accessor %s, ttl %ss)", info.accessor, info.ttl_seconds)
        return self._remember(info)

    # -- upkeep ----------------------------------------------------------------------------

    def ensure_token(self) -> TokenInfo:
        """Make sure there is a usable token: log in, renew or do nothing.

        Logs in when never logged in or when the token source (TokenAuth) changed; checks the
        token after a 403 and logs in again when it was rejected; renews at 2/3 of its TTL when
        renewable and logs in again when the renewal fails or cannot extend it.
        """
        if self.info is None or self._obtained_at is None:
            return self.login()
        auth = self.auth
        if isinstance(auth, TokenAuth) and self._token_source_changed(auth):
            logger.info("the Vault token source changed: using the new token")
            return self.login()
        if self.transport.forbidden:
            return self._check_after_403()
        action = token_action(
            now=self._clock(),
            obtained_at=self._obtained_at,
            ttl_seconds=self.info.ttl_seconds,
            renewable=self.info.renewable and not self._renewal_exhausted,
            relogin_useful=not isinstance(auth, TokenAuth),
        )
        if action == "renew":
            return self._renew_or_login()
        if action == "login":
            return self.login()
        return self.info

    def _check_after_403(self) -> TokenInfo:
        """After a 403: GET /auth/token/lookup-self; a rejected token means a new login."""
        try:
            return self.lookup_self()
        except VaultUnavailableError:
            raise
        except VaultError:
            logger.warning("the Vault token was rejected: logging in again")
            return self.login()

    def _renew_or_login(self) -> TokenInfo:
        """POST /auth/token/renew-self; a renewal Vault refuses means a new login."""
        try:
            return self.renew_self()
        except VaultUnavailableError:
            raise
        except VaultError as exc:
            logger.warning("renewing the Vault token failed (%s): logging in again", exc)
            return self.login()

    # -- the token source (TokenAuth) -------------------------------------------------------

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
