"""The transport of the REST client: the session, its trust and authentication, sending with
retries, and turning answers and errors into typed values or :class:`ClusterError`.
"""

from __future__ import annotations

import json
import logging
import ssl
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import requests
import urllib3

from vault_bridge.adapters.rest.errors import (
    _MALFORMED,
    DATABASE_STATUS_MESSAGES,
    ERROR_CODE_MESSAGES,
    INSTALL_STATUS_MESSAGES,
    RETRY_STATUSES,
)
from vault_bridge.adapters.rest.trust import (
    _ClientCertAdapter,
    _FingerprintAdapter,
    _peer_alert,
    client_context,
)
from vault_bridge.config.settings import ClusterSettings
from vault_bridge.errors import ClusterError
from vault_bridge.models.certificates import InstalledCertificate, IssuedCertificate
from vault_bridge.models.cluster import (
    OcspConfig,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ClusterTransport:
    """REST client of one cluster. ``sleep`` is injected so retries never block tests."""

    def __init__(
        self,
        settings: ClusterSettings,
        *,
        extra_ca_pems: Sequence[str] = (),
        sleep: Callable[[float], None] | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        password: Callable[[], str] | None = None,
        client_certificate: Callable[[], IssuedCertificate] | None = None,
        monotonic: Callable[[], float] | None = None,
        version_ttl: float = 3600.0,
    ) -> None:
        """``password`` reads the password (from Vault) when ``settings`` has none; it is
        called once, on the first request. The lowest node version is read again after
        ``version_ttl`` seconds (``monotonic`` is the clock).

        ``client_certificate`` (``login = "certificate"``) returns the certificate to log in
        with; it is called before every request (it renews the certificate when due) and a new
        certificate is presented from the next connection on. No Basic credentials are sent then.
        """
        if settings.login == "certificate":
            if client_certificate is None:
                raise ValueError(f"cluster {settings.name}: login = 'certificate' needs a source")
        elif settings.password is None and password is None:
            raise ValueError(f"cluster {settings.name}: no password and no way to read one")
        self._password_source = password
        self._client_source = client_certificate
        self._client_cert: IssuedCertificate | None = None
        self._client_context: ssl.SSLContext | None = None
        self._client_lock = threading.Lock()
        self.settings = settings
        self.name = settings.name
        self._sleep = sleep or _real_sleep
        self._retries = retries
        self._backoff = backoff
        self._bundle_dir: tempfile.TemporaryDirectory[str] | None = None
        self._verify: str | bool = True
        self._pool_size = 10  # requests' default pool_maxsize
        self._monotonic = monotonic or _monotonic
        self._version_ttl = version_ttl
        self._version: tuple[float, tuple[int, ...]] | None = None
        self._last_read: tuple[float, dict[str, InstalledCertificate]] | None = None
        self._last_ocsp: tuple[float, OcspConfig | None] | None = None
        self._session = self._new_session()
        self._pin_session: requests.Session | None = None
        if settings.insecure_skip_verify:
            logger.warning(
                "cluster %s: TLS verification of the REST API is OFF (insecure_skip_verify)",
                settings.name,
            )
            self._verify = False
        else:
            self.set_trust(extra_ca_pems)
            if settings.ca_fingerprint:
                self._pin_session = self._new_session()
                self._pin_session.mount("https://", _FingerprintAdapter(settings.ca_fingerprint))

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # Never let REQUESTS_CA_BUNDLE & co. replace the trust chosen here; verify= is also
        # passed with every request.
        session.trust_env = False
        if self.settings.password is not None and self.settings.login == "password":
            session.auth = (self.settings.username, self.settings.password.get_secret_value())
        session.headers["Accept"] = "application/json"
        return session

    def set_trust(self, extra_ca_pems: Sequence[str]) -> None:
        """Trust ``ca_file`` plus ``extra_ca_pems`` (the Vault CA chain for our own api cert)."""
        if self.settings.insecure_skip_verify:
            return
        pems: list[str] = []
        if self.settings.ca_file:
            pems.append(Path(self.settings.ca_file).read_text(encoding="utf-8"))
        pems.extend(extra_ca_pems)
        if not pems:
            self._verify = True  # the platform's CA store (certifi), never the environment's
            return
        path = Path(self._private_dir()) / "ca.pem"
        text = "\n".join(p.strip() for p in pems) + "\n"
        if self._verify == str(path) and path.read_text(encoding="utf-8") == text:
            return
        path.write_text(text, encoding="utf-8")
        self._verify = str(path)
        if self._client_cert is not None:
            # A shared TLS context keeps every CA once loaded: start afresh with the new trust.
            with self._client_lock:
                if self._client_cert is not None:
                    self._use_client_certificate(self._client_cert)

    def _private_dir(self) -> str:
        if self._bundle_dir is None:
            self._bundle_dir = tempfile.TemporaryDirectory(prefix="vault-bridge-trust-")
        return self._bundle_dir.name

    @property
    def login_certificate(self) -> IssuedCertificate | None:
        """The client certificate presented to the cluster now (``login = "certificate"``)."""
        return self._client_cert

    def _ensure_client_certificate(self) -> None:
        """Take the current login certificate from its source; a new one is presented from
        the next connection on (open keep-alive connections stay as they are)."""
        if self._client_source is None:
            return
        issued = self._client_source()
        with self._client_lock:
            current = self._client_cert
            if current is not None and current.serial == issued.serial:
                return
            self._use_client_certificate(issued)
        logger.info(
            "cluster %s: logging in with client certificate serial %s (not_after %s)",
            self.name,
            issued.serial,
            issued.not_after.isoformat(),
        )

    def _use_client_certificate(self, issued: IssuedCertificate) -> None:
        context = client_context(issued, self._private_dir())
        self._client_context = context
        self._client_cert = issued
        self._session.mount("https://", _ClientCertAdapter(context, self._pool_size))
        if self._pin_session is not None and self.settings.ca_fingerprint:
            pin_context = client_context(issued, self._private_dir())
            self._pin_session.mount(
                "https://", _FingerprintAdapter(self.settings.ca_fingerprint, pin_context)
            )

    @property
    def backoff(self) -> float:
        """The first retry delay, in seconds (doubled at each retry)."""
        return self._backoff

    @property
    def verify(self) -> str | bool:
        return self._verify

    def close(self) -> None:
        self._session.close()
        if self._pin_session is not None:
            self._pin_session.close()
        if self._bundle_dir is not None:
            self._bundle_dir.cleanup()
            self._bundle_dir = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------

    def _ensure_auth(self) -> None:
        """Read the password from its source on first use (never logged, never stored)."""
        if (
            self._session.auth is not None
            or self._password_source is None
            or self.settings.login == "certificate"
        ):
            return
        credentials = (self.settings.username, self._password_source())
        self._session.auth = credentials
        if self._pin_session is not None:
            self._pin_session.auth = credentials

    def _send(
        self,
        method: str,
        path: str,
        body: Any | None,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        self._ensure_auth()
        self._ensure_client_certificate()
        url = f"{self.settings.url}{path}"
        data = json.dumps(body) if body is not None else None
        all_headers = {"Content-Type": "application/json"} if body is not None else {}
        all_headers.update(headers or {})
        kwargs: dict[str, Any] = {
            "data": data,
            "headers": all_headers,
            # (connect, read): a long read timeout only where the endpoint documents one.
            "timeout": (self.settings.timeout, timeout or self.settings.timeout),
        }
        try:
            if self._verify is False:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                    return self._session.request(method, url, verify=False, **kwargs)
            try:
                return self._session.request(method, url, verify=self._verify, **kwargs)
            except requests.exceptions.SSLError:
                if self._pin_session is None:
                    raise
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                    return self._pin_session.request(method, url, verify=False, **kwargs)
        except requests.exceptions.SSLError as exc:
            if self._client_cert is not None and _peer_alert(exc):
                raise ClusterError(
                    f"the cluster refused the client certificate in the TLS handshake "
                    f"({_short(exc)}): does its mtls_trusted_ca hold the certificate's CA, and "
                    f"is mtls_certificate_authentication on?",
                    cluster=self.name,
                    method=method,
                    url=url,
                ) from exc
            raise ClusterError(
                f"TLS verification of the REST API failed: {_short(exc)} (set ca_file or "
                f"ca_fingerprint to the cluster's API certificate)",
                cluster=self.name,
                method=method,
                url=url,
            ) from exc
        except requests.exceptions.Timeout as exc:
            raise ClusterError(
                f"no answer within {timeout or self.settings.timeout:g}s: {_short(exc)}",
                cluster=self.name,
                method=method,
                url=url,
                retryable=True,
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise ClusterError(
                f"cannot reach the cluster: {_short(exc)}",
                cluster=self.name,
                method=method,
                url=url,
                retryable=True,
            ) from exc

    def request(
        self,
        method: str,
        path: str,
        body: Any | None = None,
        *,
        certificate: str | None = None,
        messages: Mapping[int, str] = INSTALL_STATUS_MESSAGES,
        retry: bool = True,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request, retrying 409/500/503 and connection errors with backoff."""
        attempts = self._retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                response = self._send(method, path, body, timeout=timeout, headers=headers)
                if response.status_code < 400:
                    return self._json(response, method, path)
                raise self._error(response, method, path, certificate, messages)
            except ClusterError as exc:
                if not exc.retryable or attempt == attempts - 1:
                    raise
                delay = self._backoff * (2**attempt)
                logger.warning(
                    "%s; retrying in %.1fs (%d/%d)", exc, delay, attempt + 1, attempts - 1
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, response: requests.Response, method: str, path: str) -> Any:
        """The JSON of a 2xx answer; a body that is not JSON is a malformed answer."""
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise self.malformed(method, path, f"not JSON ({_short(exc)})") from exc

    def malformed(self, method: str, path: str, what: str) -> ClusterError:
        """The error for an answer that cannot be what the endpoint returns: nothing is
        concluded from it (never "missing", never "not installed")."""
        return ClusterError(
            f"malformed answer: {what}; nothing was changed because of it",
            cluster=self.name,
            method=method,
            url=f"{self.settings.url}{path}",
        )

    def _typed(self, method: str, path: str, build: Callable[[], T]) -> T:
        """``build()`` the typed value of an answer; a wrong shape is a malformed answer."""
        try:
            return build()
        except _MALFORMED as exc:
            raise self.malformed(method, path, f"{type(exc).__name__}: {_short(exc)}") from exc

    def _error(
        self,
        response: requests.Response,
        method: str,
        path: str,
        certificate: str | None,
        messages: Mapping[int, str],
    ) -> ClusterError:
        status = response.status_code
        code, description = "", ""
        try:
            payload = response.json()
            if isinstance(payload, dict):
                code = str(payload.get("error_code") or "")
                # The cluster endpoints say "description"; bdb and CRDB errors say "message"
                # (requests/bdbs/_index.md): read both.
                description = "; ".join(
                    str(payload[k]) for k in ("message", "description") if payload.get(k)
                )
        except ValueError:
            description = response.text[:200].strip()
        text = ERROR_CODE_MESSAGES.get(code) or messages.get(status) or f"unexpected HTTP {status}"
        if status == 401 and self._client_cert is not None:
            text = (
                f"authentication failed: no cluster user with auth_method 'certificate' and "
                f"certificate_subject_line {self._client_cert.info.subject!r}"
            )
        elif status == 401:
            text = (
                "authentication failed: wrong username or password, or Basic authentication "
                "is turned off on the cluster (control_plane_basic_authentication)"
            )
        if description and description not in text:
            text = f"{text} ({code + ': ' if code else ''}{description})"
        return ClusterError(
            text,
            cluster=self.name,
            certificate=certificate,
            method=method,
            url=f"{self.settings.url}{path}",
            status=status,
            retryable=status in RETRY_STATUSES,
        )

    def _get(self, path: str, build: Callable[[Any], T]) -> T:
        data = self.request("GET", path, messages=DATABASE_STATUS_MESSAGES)
        return self._typed("GET", path, lambda: build(data))


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 240 else text[:237] + "..."


def _real_sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def _monotonic() -> float:
    import time

    return time.monotonic()
