"""Vault over HTTP: the hvac client and its session, and the one table from failures to errors.

Errors from hvac and requests are re-raised ``from`` the original as
:class:`~vault_bridge.errors.VaultPermissionError` (403), :class:`VaultUnavailableError`
(cannot connect, sealed, 5xx gateway/down) or :class:`VaultError` (anything else), each with
``method``, ``url`` and ``status``.

TLS verification is always on. ``ca_cert`` pins the CA: it is handed to requests per request,
which is the one place where it beats ``REQUESTS_CA_BUNDLE`` (requests lets that variable
override a ``Session.verify`` of ``True`` but not a ``verify=`` passed with the request).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any, NoReturn

import hvac
import hvac.adapters
import hvac.exceptions
import requests

from vault_bridge.errors import VaultError, VaultPermissionError, VaultUnavailableError

logger = logging.getLogger(__name__)

# Statuses after which trying again later can succeed: rate limited, bad gateway, sealed or
# down, gateway timeout.
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


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


def is_cert_verification_error(exc: BaseException) -> bool:
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


class VaultTransport:
    """The hvac client (and its counting session) every Vault call goes through.

    ``forbidden`` is set by any 403: the token upkeep then checks the token before trusting it.
    """

    def __init__(
        self,
        address: str,
        *,
        ca_cert: str | None,
        namespace: str | None,
        timeout: float,
        client_cert: tuple[str, str] | None,
    ) -> None:
        self.address = address.rstrip("/")
        self.ca_cert = ca_cert
        self.forbidden = False
        # Verification always on; a pinned CA is a path, passed with every request (see the
        # module docstring for why this beats REQUESTS_CA_BUNDLE).
        verify: str | bool = ca_cert if ca_cert else True
        self.session = _CountingSession()
        # hvac copies a given session's verify and cert into the kwargs of every request.
        self.session.verify = verify
        self.session.cert = client_cert
        self.hvac: Any = hvac.Client(
            url=self.address,
            token="",  # "" and not None: hvac would otherwise read $VAULT_TOKEN / ~/.vault-token
            cert=client_cert,
            verify=verify,
            timeout=timeout,
            session=self.session,
            adapter=_StatusAdapter,
            namespace=namespace or None,
        )

    def close(self) -> None:
        self.session.close()

    @property
    def request_count(self) -> int:
        return self.session.sent

    def url(self, path: str) -> str:
        return f"{self.address}/v1/{path}"

    def call(
        self,
        verb: str,
        path: str,
        fn: Callable[[], Any],
        *,
        capability: str | None,
        not_found: str | None = None,
    ) -> Any:
        """Run one hvac call for ``verb path`` and map what goes wrong to our errors."""
        url = self.url(path)
        try:
            return fn()
        except hvac.exceptions.VaultError as exc:
            self._refused(exc, verb, path, capability=capability, not_found=not_found)
        except requests.exceptions.SSLError as exc:
            if is_cert_verification_error(exc):
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

    def _refused(
        self,
        exc: hvac.exceptions.VaultError,
        verb: str,
        path: str,
        *,
        capability: str | None,
        not_found: str | None,
    ) -> NoReturn:
        """Vault answered with an error status: raise the error for it, ``from`` ``exc``."""
        url = self.url(path)
        status: int | None = getattr(exc, "status_code", None)
        detail = _vault_errors(exc)
        if status == 403:
            self.forbidden = True
            message = _forbidden_message(path, capability, detail)
            raise VaultPermissionError(message, method=verb, url=url, status=403) from exc
        if status in _UNAVAILABLE_STATUSES:
            message = f"Vault is unavailable: {detail or 'HTTP ' + str(status)}"
            raise VaultUnavailableError(message, method=verb, url=url, status=status) from exc
        if status == 404 and not_found:
            message = not_found + (f" ({detail})" if detail else "")
            raise VaultError(message, method=verb, url=url, status=404) from exc
        message = f"Vault refused the request: {detail}" if detail else "Vault request failed"
        raise VaultError(message, method=verb, url=url, status=status) from exc


def _forbidden_message(path: str, capability: str | None, detail: str) -> str:
    if path.startswith("auth/token/") and path.endswith("-self"):
        # usually a bad token (the default policy grants these paths to any token)
        return (
            f"the Vault token was rejected on {path}: expired or revoked, or its "
            f"policy lacks {capability!r} there"
        )
    if capability:
        return f"permission denied: the policy needs {capability!r} on {path}"
    message = f"permission denied for {path}"
    if detail and detail != "permission denied":
        message += f": {detail}"
    return message


def answer_data(resp: Any, path: str) -> dict[str, Any]:
    """The ``data`` of an answer; a :class:`VaultError` when there is none."""
    data = resp.get("data") if isinstance(resp, dict) else None
    if not isinstance(data, dict):
        raise VaultError(f"{path} answered without data")
    return data
