"""The one adapter for a Redis Enterprise cluster's REST API (a ``requests.Session``).

Each public method is one endpoint; its docstring names the verb and path. JSON answers become
typed values here. Trust: the API's TLS certificate is always verified, against ``ca_file``
and the Vault CA chain once vault_bridge manages the ``api`` certificate, or against a pinned
SHA-256 fingerprint; ``insecure_skip_verify`` turns it off (with a warning at every start).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter

from vault_bridge.config.schema import MTLS_TRUSTED_CA
from vault_bridge.config.settings import ClusterSettings
from vault_bridge.decisions.install import CertUpload
from vault_bridge.errors import CertificateError, ClusterError
from vault_bridge.models.certificates import CertName, InstalledCertificate, IssuedCertificate
from vault_bridge.models.cluster import (
    Bdb,
    ClusterAccess,
    Crdb,
    CrdbTask,
    Node,
    OcspConfig,
    OcspStatus,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Certificates every cluster has and cannot delete (requests/cluster/certificates/_index.md,
# DELETE: 403 for a required certificate): an answer without one of them is malformed, never
# "the certificate is missing".
REQUIRED_CERTIFICATES = ("api", "cm", "proxy", "syncer")
# What a malformed answer may raise while it is turned into typed values.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, CertificateError)

RETRY_STATUSES = frozenset({409, 500, 503})

# One table: HTTP status -> what it means for a certificate install.
INSTALL_STATUS_MESSAGES: Mapping[int, str] = {
    400: "the cluster rejected the certificate as invalid",
    401: "authentication failed: wrong username or password",
    403: "forbidden: unknown certificate name, or the user lacks the admin role (update_cluster)",
    404: "the cluster rejected the certificate as invalid",
    405: "method not allowed",
    406: "the cluster rejected the certificate as expired",
    409: "not all nodes have been updated",
    500: "internal error on the cluster",
    503: "the node is not answering or not in the cluster",
}
ERROR_CODE_MESSAGES: Mapping[str, str] = {
    "key_values_mismatch": "the private key does not match the certificate",
    "certificate_expired": "the certificate has expired",
    "invalid_certificate": "the certificate is invalid",
    "duplicated_certs": "the same certificate is listed twice",
}
# PUT /v1/bdbs/<uid> and the CRDB endpoints (the follow-ups).
DATABASE_STATUS_MESSAGES: Mapping[int, str] = {
    400: "the cluster rejected the request as invalid",
    401: "authentication failed: wrong username or password",
    403: "forbidden: the user lacks the permission",
    404: "no such database, CRDB or task",
    406: "the database rejected the configuration",
    409: "the database is busy with another change",
    500: "internal error on the cluster",
    503: "the node is not answering or not in the cluster",
}

# GET /v1/users/role and GET /v1/users
ROLE_STATUS_MESSAGES: Mapping[int, str] = {
    401: "authentication failed: wrong username or password",
    403: "forbidden: the user may not read users",
    404: "no such endpoint on this cluster version",
}


class _FingerprintAdapter(HTTPAdapter):
    """Accepts exactly the server certificate with the pinned SHA-256 fingerprint."""

    def __init__(self, fingerprint: str, context: ssl.SSLContext | None = None) -> None:
        self._fingerprint = fingerprint
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._fingerprint
        kwargs["cert_reqs"] = ssl.CERT_NONE
        if self._context is not None:
            kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


class _ClientCertAdapter(HTTPAdapter):
    """Presents a client certificate (held in ``context``) in every TLS handshake; the server's
    certificate is still verified as ``verify=`` says, request by request."""

    def __init__(self, context: ssl.SSLContext, pool_maxsize: int) -> None:
        self._context = context
        super().__init__(pool_connections=4, pool_maxsize=pool_maxsize)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


def client_context(issued: IssuedCertificate, directory: str) -> ssl.SSLContext:
    """A client TLS context holding ``issued`` (leaf and intermediates) and its key.

    OpenSSL loads a certificate and key from files only: they go to a 0600 file in a private
    0700 directory for the moment of loading and are removed at once. Nothing is logged.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Hostnames are matched by urllib3 itself (the context is shared with the pinned path).
    context.check_hostname = False
    fd, path = tempfile.mkstemp(dir=directory, suffix=".pem")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(issued.chain_pem)
            handle.write(issued.private_key.strip() + "\n")
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
    return context


class ClusterClient:
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

    def __enter__(self) -> ClusterClient:
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

    # -- endpoints -----------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """GET /v1/nodes"""
        data = self.request("GET", "/v1/nodes")
        return self._typed("GET", "/v1/nodes", lambda: [Node.from_json(n) for n in _list(data)])

    def lowest_version(self) -> tuple[int, ...]:
        """The lowest ``software_version`` over the nodes (GET /v1/nodes), read again once
        ``version_ttl`` has passed. Kept in between: during a rolling upgrade the lowest version
        only rises, and an endpoint a cluster lacks is noticed at the install (404/405)."""
        now = self._monotonic()
        if self._version is not None and now - self._version[0] < self._version_ttl:
            return self._version[1]
        nodes = self.nodes()
        if not nodes:
            raise ClusterError("the cluster reports no nodes", cluster=self.name)
        lowest = min(n.version for n in nodes)
        self._version = (now, lowest)
        return lowest

    def cluster_info(self) -> dict[str, Any]:
        """GET /v1/cluster"""
        return dict(self.request("GET", "/v1/cluster"))

    def access(self) -> ClusterAccess:
        """GET /v1/cluster -> the login and cipher settings."""
        data = self.request("GET", "/v1/cluster")
        if not isinstance(data, dict):
            raise ClusterError("GET /v1/cluster answered no object", cluster=self.name)
        return ClusterAccess.from_json(data)

    # -- OCSP stapling of the proxy certificate ------------------------------------------

    def ocsp(self) -> OcspConfig | None:
        """GET /v1/ocsp (None: the cluster has no OCSP, 404, or not on every node, 406)."""
        try:
            config = OcspConfig.from_json(self.request("GET", "/v1/ocsp", retry=False))
        except ClusterError as exc:
            if exc.status not in (404, 406):
                raise
            config = None
        self._last_ocsp = (self._monotonic(), config)
        return config

    def last_ocsp(self, max_age: float = 60.0) -> OcspConfig | None:
        """What the last GET /v1/ocsp answered, when vault-bridge has not changed the OCSP
        settings since and it is younger than ``max_age`` seconds; else a new read (the plan's
        read serves the check before a proxy install and the report after it)."""
        last = self._last_ocsp
        if last is None or self._monotonic() - last[0] >= max_age:
            return self.ocsp()
        return last[1]

    def enable_ocsp(self) -> OcspConfig:
        """PUT /v1/ocsp with ``{"ocsp_functionality": true}``."""
        body = {"ocsp_functionality": True}
        self._last_ocsp = None
        config = OcspConfig.from_json(self.request("PUT", "/v1/ocsp", body, retry=False))
        self._last_ocsp = (self._monotonic(), config)
        return config

    def ocsp_status(self) -> OcspStatus:
        """GET /v1/ocsp/status: the status the cluster staples now (its cache)."""
        return OcspStatus.from_json(self.request("GET", "/v1/ocsp/status"))

    def ocsp_test(self) -> OcspStatus:
        """POST /v1/ocsp/test: ask the responder now (cached when OCSP is on)."""
        return OcspStatus.from_json(self.request("POST", "/v1/ocsp/test", retry=False))

    def certificates(self) -> dict[str, InstalledCertificate]:
        """GET /v1/cluster/certificates -> installed certificates by name (keys dropped).

        Strict: an answer that is not an object, lacks a certificate every cluster has, or
        holds something other than a PEM certificate for a name vault_bridge knows is
        malformed (a :class:`ClusterError`), never read as "missing". The answer is kept as
        :meth:`last_certificates` until the next install request."""
        path = "/v1/cluster/certificates"
        data = self.request("GET", path)
        if not isinstance(data, dict):
            raise self.malformed("GET", path, f"expected an object, got {type(data).__name__}")
        absent = [n for n in REQUIRED_CERTIFICATES if not _pem_text(data.get(f"{n}_cert"))]
        if absent:
            raise self.malformed(
                "GET", path, f"no {', '.join(f'{n}_cert' for n in absent)} in the answer"
            )
        known = {n.value for n in CertName} | {MTLS_TRUSTED_CA}
        out: dict[str, InstalledCertificate] = {}
        for key, value in data.items():
            if not key.endswith("_cert") or value in (None, ""):
                continue
            name = key.removesuffix("_cert")
            if name not in known:
                continue
            if not isinstance(value, str):
                raise self.malformed("GET", path, f"{key} is a {type(value).__name__}")
            try:
                out[name] = InstalledCertificate.from_pem(name, value)
            except CertificateError as exc:
                raise self.malformed("GET", path, f"{key}: {exc}") from exc
        self._last_read = (self._monotonic(), dict(out))
        return out

    def last_certificates(self, max_age: float = 60.0) -> dict[str, InstalledCertificate]:
        """What the last GET /v1/cluster/certificates answered, when no install request was
        sent since, :meth:`forget_certificates` was not called and it is younger than
        ``max_age`` seconds; else a new read (one read of a pass serves the plan, the install
        and the follow-ups' discovery)."""
        last = self._last_read
        if last is None or self._monotonic() - last[0] >= max_age:
            return self.certificates()
        return dict(last[1])

    def forget_certificates(self) -> None:
        """The next :meth:`last_certificates` reads the cluster again."""
        self._last_read = None

    def put_certificates(self, items: Sequence[CertUpload]) -> None:
        """PUT /v1/cluster/certificates (bulk, 7.22.2+); all items or none are applied.

        Sent once, with the install timeout (the OpenAPI gives this endpoint 900 s): after a
        timeout or a dropped connection the caller reads the certificates back before sending
        again (:class:`vault_bridge.rotation.executor.Rotator`)."""
        body = {"certificates": [item.as_json() for item in items]}
        self._last_read = None  # sent: what the cluster serves may change, even on an error
        self.request(
            "PUT",
            "/v1/cluster/certificates",
            body,
            certificate=",".join(i.name for i in items),
            retry=False,
            timeout=self.settings.install_timeout,
        )

    def update_cert(self, item: CertUpload) -> None:
        """PUT /v1/cluster/update_cert (one certificate, every version); sent once, with the
        install timeout, like :meth:`put_certificates`."""
        self._last_read = None
        self.request(
            "PUT",
            "/v1/cluster/update_cert",
            item.as_json(),
            certificate=item.name,
            retry=False,
            timeout=self.settings.install_timeout,
        )

    def user_role(self) -> str | None:
        """GET /v1/users/role (in the OpenAPI document): the management role of the user we
        log in as; None when the cluster does not have the endpoint (404: older clusters)."""
        path = "/v1/users/role"
        try:
            data = self.request("GET", path, retry=False, messages=ROLE_STATUS_MESSAGES)
        except ClusterError as exc:
            if exc.status in (404, 405):
                return None
            raise
        return self._typed("GET", path, lambda: _str_field(data, "role"))

    def role_from_users(self) -> str | None:
        """GET /v1/users: the role of our user's entry (matched by ``email``); None when the
        user may not list users (403: only ``admin`` and ``user_manager`` may)."""
        path = "/v1/users"
        try:
            data = self.request("GET", path, retry=False, messages=ROLE_STATUS_MESSAGES)
        except ClusterError as exc:
            if exc.status == 403:
                return None
            raise

        def find(items: Any) -> str | None:
            for user in _list(items):
                if isinstance(user, dict) and user.get("email") == self.settings.username:
                    return _str_field(user, "role")
            return None

        return self._typed("GET", path, lambda: find(data))

    def management_role(self) -> str | None:
        """The management role of our user: GET /v1/users/role, or on a cluster without it
        GET /v1/users; None when neither tells. Neither changes anything, and neither 403 can
        be confused with the "unknown certificate" 403 of the install endpoints (the old
        probe, PUT /v1/cluster/update_cert, was both deprecated and ambiguous)."""
        role = self.user_role()
        return role if role is not None else self.role_from_users()

    def can_install(self) -> bool:
        """Whether our user holds ``admin``, the one role with ``update_cluster``."""
        return self.management_role() == "admin"

    # -- databases and Active-Active (the follow-ups) ------------------------------------

    def reserve_connections(self, count: int) -> None:
        """Keep up to ``count`` connections to the cluster, for as many concurrent requests
        (the follow-ups' step 2 runs one request per CRDB at once)."""
        if count <= self._pool_size:
            return
        self._pool_size = count
        with self._client_lock:
            if self._client_context is not None:
                self._session.mount("https://", _ClientCertAdapter(self._client_context, count))
                return
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=count)
        self._session.mount("https://", adapter)

    def _get(self, path: str, build: Callable[[Any], T]) -> T:
        data = self.request("GET", path, messages=DATABASE_STATUS_MESSAGES)
        return self._typed("GET", path, lambda: build(data))

    def crdbs(self) -> list[Crdb]:
        """GET /v1/crdbs"""
        return self._get("/v1/crdbs", lambda data: [Crdb.from_json(c) for c in _list(data)])

    def crdb(self, guid: str) -> Crdb:
        """GET /v1/crdbs/<guid>"""
        return self._get(f"/v1/crdbs/{guid}", Crdb.from_json)

    def crdb_tasks(self) -> list[CrdbTask]:
        """GET /v1/crdb_tasks"""

        def build(data: Any) -> list[CrdbTask]:
            items = data.get("tasks", []) if isinstance(data, dict) else data
            return [CrdbTask.from_json(t) for t in _list(items)]

        return self._get("/v1/crdb_tasks", build)

    def crdb_task(self, task_id: str) -> CrdbTask:
        """GET /v1/crdb_tasks/<id>"""
        return self._get(f"/v1/crdb_tasks/{task_id}", CrdbTask.from_json)

    def crdb_update(
        self, guid: str, body: Mapping[str, Any] | None = None, *, task_id: str | None = None
    ) -> CrdbTask:
        """POST /v1/crdbs/<guid>/updates (default body ``{"force_update": true}``) with an
        ``X-Task-ID`` of our choosing (requests/crdbs/updates.md): sent once; after a timeout
        the caller polls ``GET /v1/crdb_tasks/<that id>`` instead of starting a second task."""
        path = f"/v1/crdbs/{guid}/updates"
        data = self.request(
            "POST",
            path,
            dict(body) if body is not None else {"force_update": True},
            messages=DATABASE_STATUS_MESSAGES,
            retry=False,
            headers={"X-Task-ID": task_id or new_task_id()},
        )
        return self._typed("POST", path, lambda: CrdbTask.from_json(data))

    def bdbs(self) -> list[Bdb]:
        """GET /v1/bdbs"""
        return self._get("/v1/bdbs", lambda data: [Bdb.from_json(b) for b in _list(data)])

    def bdb(self, uid: int) -> Bdb:
        """GET /v1/bdbs/<uid>"""
        return self._get(f"/v1/bdbs/{uid}", Bdb.from_json)

    # -- a database's own proxy certificate ---------------------------------------------

    def bdb_certificates(
        self, expires_before: str | None = None
    ) -> dict[int, InstalledCertificate]:
        """GET /v1/bdbs/certificates[?expires_before=] -> the databases' own proxy certificates
        by uid. 404: the cluster has no such endpoint (an older Redis Enterprise)."""
        query = f"?expires_before={quote(expires_before)}" if expires_before else ""
        try:
            data = self.request(
                "GET", f"/v1/bdbs/certificates{query}", messages=DATABASE_STATUS_MESSAGES
            )
        except ClusterError as exc:
            if exc.status == 404:
                raise ClusterError(
                    "this cluster has no per-database certificate endpoints "
                    "(GET /v1/bdbs/certificates answers 404): per-database certificates need "
                    "a newer Redis Enterprise",
                    cluster=self.name,
                    status=404,
                ) from exc
            raise
        out: dict[int, InstalledCertificate] = {}
        for item in data if isinstance(data, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("cert"), str):
                continue
            try:
                uid = int(item.get("bdb_uid", ""))
            except ValueError:
                continue
            out[uid] = InstalledCertificate.from_pem(f"bdb:{uid}", item["cert"])
        return out

    def bdb_certificate(self, uid: int) -> InstalledCertificate | None:
        """GET /v1/bdbs/<uid>/certificates (None: the database has no certificate of its own)."""
        try:
            data = self.request(
                "GET", f"/v1/bdbs/{uid}/certificates", messages=DATABASE_STATUS_MESSAGES
            )
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise
        pem = data.get("cert") if isinstance(data, dict) else None
        if not isinstance(pem, str) or not pem.strip():
            return None
        return InstalledCertificate.from_pem(f"bdb:{uid}", pem)

    def set_bdb_certificate(self, uid: int, upload: CertUpload, *, dry_run: bool) -> None:
        """POST /v1/bdbs/<uid>/certificates[?dry_run=true] with ``{"cert", "private_key"}``
        (dry_run validates without changing anything). Never resent blindly: the caller reads
        the certificate back."""
        body = {"cert": upload.certificate, "private_key": upload.key}
        query = "?dry_run=true" if dry_run else ""
        self.request(
            "POST",
            f"/v1/bdbs/{uid}/certificates{query}",
            body,
            certificate=upload.name,
            messages=DATABASE_STATUS_MESSAGES,
            retry=False,
        )

    def update_bdb(self, uid: int, changes: Mapping[str, Any]) -> Bdb:
        """PUT /v1/bdbs/<uid> (409 busy is retried with backoff)."""
        path = f"/v1/bdbs/{uid}"
        data = self.request("PUT", path, dict(changes), messages=DATABASE_STATUS_MESSAGES)
        return self._typed("PUT", path, lambda: Bdb.from_json(data))


def new_task_id() -> str:
    """A task ID for ``X-Task-ID`` (a UUID, as the cluster's own task IDs are)."""
    return str(uuid.uuid4())


def _list(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise TypeError(f"expected a list, got {type(data).__name__}")
    return data


def _str_field(data: Any, key: str) -> str:
    if not isinstance(data, dict) or not isinstance(data.get(key), str):
        raise TypeError(f"expected an object with a string {key!r}")
    return str(data[key])


def _pem_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


_PEER_ALERTS = (
    "alert unknown ca",
    "alert bad certificate",
    "certificate required",
    "alert certificate expired",
    "alert certificate unknown",
    "alert handshake failure",
)


def _peer_alert(exc: BaseException) -> bool:
    """Whether a TLS error is the server's alert about our client certificate."""
    text = str(exc).lower()
    return any(alert in text for alert in _PEER_ALERTS)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 240 else text[:237] + "..."


def _real_sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def _monotonic() -> float:
    import time

    return time.monotonic()
