"""A simulated Redis Enterprise Software cluster on loopback, written from the REST contract.

It serves what vault_bridge talks to and checks, with real TLS:

- the REST API (``api`` certificate): ``GET /v1/nodes``, ``GET /v1/cluster``,
  ``GET|PUT /v1/cluster/certificates`` (bulk install, 7.22.2+) and ``PUT /v1/cluster/update_cert``;
- the Cluster Manager UI (``cm`` certificate): a tiny HTTPS page;
- the Prometheus exporter (``metrics_exporter`` certificate): ``node_cert_expiration_seconds``;
- one database endpoint (``proxy`` certificate): TLS, then ``+PONG`` to anything;
- databases and Active-Active: ``GET /v1/crdbs[/<guid>]``, ``POST /v1/crdbs/<guid>/updates``,
  ``GET /v1/crdb_tasks[/<id>]``, ``GET /v1/bdbs[/<uid>]``, ``PUT /v1/bdbs/<uid>``, with the sync
  health model of :mod:`vault_bridge.testing.databases` (shared by clusters given one ``world``).

It is strict where the contract is (``/work/shared/redis-enterprise-api.md``): Basic auth on
every call, the documented status codes and ``{"error_code", "description"}`` bodies, atomic
bulk installs, the certificate requirements. Each listener builds its TLS context from the
certificate installed at that moment, so a new connection sees a new certificate.

Routes live in one table (:class:`Router`); handlers are methods on :class:`_RestApi`.

Run it standalone with ``python -m vault_bridge.testing.simulator --help``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hmac
import ipaddress
import itertools
import json
import logging
import os
import re
import secrets
import selectors
import signal
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler
from types import FrameType, TracebackType
from typing import Any, Final, cast
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vault_bridge.models import CertificateInfo, CertName, split_pem_chain
from vault_bridge.testing.databases import DatabaseError, DatabaseWorld, Outage

logger = logging.getLogger(__name__)

Version = tuple[int, ...]

#: Listeners with a port of their own, each serving the certificate of the same name.
LISTENERS: Final = ("api", "cm", "metrics_exporter", "proxy")
MTLS_TRUSTED_CA: Final = "mtls_trusted_ca"
BULK_MIN_VERSION: Final[Version] = (7, 22, 2)
#: Lowest software version that knows each certificate name (absent: every version).
NAME_MIN_VERSION: Final[Mapping[str, Version]] = {
    CertName.LDAP_CLIENT.value: (7, 4),
    MTLS_TRUSTED_CA: (7, 8),
    CertName.CCS_INTERNODE.value: BULK_MIN_VERSION,
    CertName.DATA_INTERNODE.value: BULK_MIN_VERSION,
}
INTERNODE_NAMES: Final = frozenset(n.value for n in CertName if n.internode)
KNOWN_NAMES: Final = frozenset([*(n.value for n in CertName), MTLS_TRUSTED_CA])
DEFAULT_USERS: Final[Mapping[str, tuple[str, str]]] = {
    "admin@example.com": ("admin-password", "admin"),
    "viewer@example.com": ("viewer-password", "db_viewer"),
}
ACCEPTED_CURVES: Final = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MIN_RSA_BITS: Final = 2048
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
HANDSHAKE_TIMEOUT: Final = 10.0  # a client that connects and stalls holds only its own thread
IDLE_TIMEOUT: Final = 120.0  # keep-alive and proxy connections idle longer than this are closed
JOIN_TIMEOUT: Final = 5.0


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class RecordedRequest:
    """One REST request as the cluster answered it; ``at`` is ``time.monotonic()`` on arrival."""

    method: str
    path: str  # without the query string
    status: int
    at: float
    user: str | None  # the authenticated user, None when credentials were missing or wrong


@dataclass(frozen=True)
class _Installed:
    """A certificate as installed: the chain as given (leaf first) and its key."""

    name: str
    chain_pem: str
    key_pem: str | None = field(repr=False)  # private key: never log it
    leaf: x509.Certificate = field(repr=False, compare=False)


@dataclass(frozen=True)
class _User:
    name: str
    password: str = field(repr=False)
    role: str


@dataclass(frozen=True)
class _Node:
    uid: int
    software_version: str


@dataclass
class _Fault:
    method: str
    path: str
    status: int
    remaining: int
    delay: float
    body: Any


@dataclass(frozen=True)
class _CertItem:
    """One ``{"name", "certificate", "key"}`` item of an install request, shape-checked."""

    name: str
    certificate: str
    key: str | None = field(repr=False)  # private key: never log it


def parse_version(version: str) -> Version:
    """``"7.22.2-14"`` -> ``(7, 22, 2, 14)``; raises ValueError for anything else."""
    if not re.fullmatch(r"\d+(\.\d+)*(-\d+)?", version):
        raise ValueError(f"not a Redis Enterprise software version: {version!r}")
    return tuple(int(part) for part in re.findall(r"\d+", version))


# --------------------------------------------------------------------------- errors


class _ApiError(Exception):
    """A documented REST error: status plus ``{"error_code", "description"}``."""

    def __init__(
        self,
        status: int,
        error_code: str,
        description: str,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(f"{status} {error_code}: {description}")
        self.status = status
        self.error_code = error_code
        self.description = description
        self.headers = dict(headers or {})
        self.close = close

    def response(self) -> ApiResponse:
        body = {"error_code": self.error_code, "description": self.description}
        return ApiResponse(self.status, body, headers=self.headers, close=self.close)


def _invalid_request(description: str) -> _ApiError:
    return _ApiError(400, "invalid_request", description)


# --------------------------------------------------------------------------- certificates

_RSA_CACHE: list[rsa.RSAPrivateKey] = []
_RSA_CACHE_LOCK = threading.Lock()


def _cached_rsa_key(index: int) -> rsa.RSAPrivateKey:
    """RSA 2048 keys made once per process (tens of ms each) and shared by every simulator."""
    with _RSA_CACHE_LOCK:
        while len(_RSA_CACHE) <= index:
            _RSA_CACHE.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _RSA_CACHE[index]


def _self_signed(
    common_name: str, key: CertificateIssuerPrivateKeyTypes, host: str, now: datetime
) -> str:
    """A self-signed server+client certificate that loopback clients can verify by name."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(common_name.replace("_", "-")),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    if host not in ("", "0.0.0.0", "::", "127.0.0.1", "localhost"):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: PrivateKeyTypes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _parse_item(raw: Any, where: str) -> _CertItem:
    """Shape of one install item: only ``name``, ``certificate`` and ``key``, all strings."""
    if not isinstance(raw, dict):
        raise _invalid_request(f"{where} must be a JSON object")
    extra = sorted(set(raw) - {"name", "certificate", "key"})
    if extra:
        raise _invalid_request(f"{where} has unexpected key(s): {', '.join(extra)}")
    name, certificate, key = raw.get("name"), raw.get("certificate"), raw.get("key")
    if not isinstance(name, str) or not name:
        raise _invalid_request(f"{where}: 'name' is required and must be a string")
    if not isinstance(certificate, str) or not certificate.strip():
        raise _invalid_request(f"{where}: 'certificate' is required and must be a PEM string")
    if key is not None and not isinstance(key, str):
        raise _invalid_request(f"{where}: 'key' must be a PEM string")
    return _CertItem(name=name, certificate=certificate, key=key)


def _parse_chain(
    name: str, pem: str, bad_cert_status: int, *, ordered: bool = True
) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; ``ordered``: a leaf-first chain, each certificate
    issued by the next (a CA bundle such as ``mtls_trusted_ca`` need not be one)."""
    blocks = split_pem_chain(pem)
    if not blocks:
        raise _ApiError(bad_cert_status, "invalid_certificate", f"{name}: no PEM certificate")
    try:
        chain = [x509.load_pem_x509_certificate(block.encode()) for block in blocks]
        for cert in chain:
            _ = cert.extensions  # parse them now: a malformed extension is a bad certificate
    except ValueError as exc:
        raise _ApiError(
            bad_cert_status, "invalid_certificate", f"{name}: not a PEM certificate: {exc}"
        ) from exc
    for child, parent in itertools.pairwise(chain if ordered else []):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature) as exc:
            raise _ApiError(
                bad_cert_status,
                "invalid_certificate",
                f"{name}: the chain must be leaf first, each certificate issued by the next "
                f"({child.subject.rfc4514_string()} is not issued by "
                f"{parent.subject.rfc4514_string()})",
            ) from exc
    return chain


def _parse_key(name: str, pem: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The message names the problem only; the key itself is never echoed or logged.
        raise _ApiError(
            400, "invalid_key", f"{name}: the key is not an unencrypted PEM private key"
        ) from exc


def _check_key(name: str, key: PrivateKeyTypes) -> None:
    """RSA of 2048 bits or more, or EC on a NIST curve; internode certificates RSA only."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise _ApiError(
                400, "weak_key", f"{name}: RSA key of {key.key_size} bits, at least 2048 needed"
            )
        return
    if name in INTERNODE_NAMES:
        raise _ApiError(
            400, "unsupported_key_type", f"{name}: internode certificates take RSA keys"
        )
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ACCEPTED_CURVES)):
        raise _ApiError(400, "unsupported_key_type", f"{name}: key type not supported")


def _check_eku(name: str, leaf: x509.Certificate) -> None:
    try:
        usages = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    wanted = {
        ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
        ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    }
    missing = [label for oid, label in wanted.items() if oid not in usages]
    if missing:
        raise _ApiError(
            400,
            "invalid_extended_key_usage",
            f"{name}: extended key usage must contain serverAuth and clientAuth "
            f"(missing {', '.join(missing)})",
        )


def _check_not_expired(name: str, chain: list[x509.Certificate], now: datetime) -> None:
    for cert in chain:
        if cert.not_valid_after_utc <= now:
            raise _ApiError(
                406,
                "certificate_expired",
                f"{name}: {cert.subject.rfc4514_string()} expired at "
                f"{cert.not_valid_after_utc.isoformat()}",
            )


def _validate_certificate(item: _CertItem, *, now: datetime, bad_cert_status: int) -> _Installed:
    """Every check the cluster makes on one certificate; raises :class:`_ApiError`.

    ``bad_cert_status`` is what an unparseable certificate answers: 400 on the bulk endpoint,
    404 ("invalid certificate") on ``update_cert``.
    """
    name = item.name
    chain = _parse_chain(name, item.certificate, bad_cert_status, ordered=name != MTLS_TRUSTED_CA)
    leaf = chain[0]
    if name == MTLS_TRUSTED_CA:
        if item.key:
            raise _invalid_request(f"{name} takes a certificate only, no key")
        _check_not_expired(name, chain, now)
        return _Installed(name=name, chain_pem=item.certificate, key_pem=None, leaf=leaf)
    if not item.key:
        raise _invalid_request(f"{name}: 'key' is required")
    key = _parse_key(name, item.key)
    try:
        matches = _spki(key.public_key()) == _spki(leaf.public_key())
    except (ValueError, UnsupportedAlgorithm):
        matches = False
    if not matches:
        raise _ApiError(
            400, "key_values_mismatch", f"{name}: the key does not match the certificate"
        )
    _check_not_expired(name, chain, now)
    _check_key(name, key)
    _check_eku(name, leaf)
    return _Installed(name=name, chain_pem=item.certificate, key_pem=item.key, leaf=leaf)


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class ApiRequest:
    """What a route handler sees: the authenticated user and the matched path parameters."""

    method: str
    path: str
    params: Mapping[str, str]
    user: str
    raw_body: bytes = field(repr=False)

    def json(self) -> Any:
        """The body as JSON; 400 when it is missing or not JSON."""
        if not self.raw_body.strip():
            raise _invalid_request("a JSON body is required")
        try:
            return json.loads(self.raw_body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from exc


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    close: bool = False  # answer with "Connection: close"


RouteHandler = Callable[[ApiRequest], ApiResponse]

VIEW_CLUSTER_INFO: Final = "view_cluster_info"
UPDATE_CLUSTER: Final = "update_cluster"
#: Permissions per role; a role not listed gets ``view_cluster_info`` only.
ROLE_PERMISSIONS: Final[Mapping[str, frozenset[str]]] = {
    "admin": frozenset({VIEW_CLUSTER_INFO, UPDATE_CLUSTER}),
    "none": frozenset(),
}


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # "/v1/crdbs/<guid>/updates": "<x>" matches one path segment
    handler: RouteHandler
    permission: str
    min_version: Version
    pattern: re.Pattern[str]


class Router:
    """The route table: method + path template -> handler, permission, lowest version."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(
        self,
        method: str,
        template: str,
        handler: RouteHandler,
        *,
        permission: str | None = None,
        min_version: Version = (),
    ) -> None:
        """Register a route; the permission defaults to viewing for GET, updating otherwise."""
        regex = re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", re.escape(template))
        if permission is None:
            permission = VIEW_CLUSTER_INFO if method == "GET" else UPDATE_CLUSTER
        self._routes.append(
            Route(method, template, handler, permission, min_version, re.compile(regex))
        )

    def resolve(self, method: str, path: str, version: Version) -> tuple[Route, dict[str, str]]:
        """The route for a request; 404 for an unknown path (or one newer than the cluster),
        405 for a method the path does not take."""
        allowed: set[str] = set()
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            if route.method != method:
                if version >= route.min_version:
                    allowed.add(route.method)
                continue
            if version < route.min_version:
                # UNDOCUMENTED: a cluster older than the route answers 404 (contract page).
                raise _ApiError(
                    404, "not_found", f"{method} {path} is not supported by this version"
                )
            return route, match.groupdict()
        if allowed:
            raise _ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}",
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        raise _ApiError(404, "not_found", f"no such resource: {path}")


class _RestApi:
    """The REST API of one simulated cluster: request pipeline, route table and handlers."""

    def __init__(self, cluster: SimulatedCluster) -> None:
        self._cluster = cluster
        self.router = Router()
        add = self.router.add
        add("GET", "/v1/nodes", self.get_nodes)
        add("GET", "/v1/nodes/<uid>", self.get_node)
        add("GET", "/v1/cluster", self.get_cluster)
        add("GET", "/v1/cluster/certificates", self.get_certificates)
        add("PUT", "/v1/cluster/certificates", self.put_certificates, min_version=BULK_MIN_VERSION)
        add("PUT", "/v1/cluster/update_cert", self.put_update_cert)
        add("GET", "/v1/crdbs", self.get_crdbs)
        add("GET", "/v1/crdbs/<guid>", self.get_crdb)
        add("POST", "/v1/crdbs/<guid>/updates", self.post_crdb_update)
        add("GET", "/v1/crdb_tasks", self.get_crdb_tasks)
        add("GET", "/v1/crdb_tasks/<task_id>", self.get_crdb_task)
        add("GET", "/v1/bdbs", self.get_bdbs)
        add("GET", "/v1/bdbs/<uid>", self.get_bdb)
        add("PUT", "/v1/bdbs/<uid>", self.put_bdb)

    def handle(
        self,
        method: str,
        target: str,
        authorization: str | None,
        read_body: Callable[[], bytes],
    ) -> ApiResponse:
        """Answer one request: body, injected fault, auth (401), route (404/405), role (403)."""
        cluster = self._cluster
        at = time.monotonic()
        path = urlsplit(target).path
        user = cluster._authenticate(authorization)
        try:
            raw_body = read_body()  # an OSError here: the client went away, nothing to answer
        except _ApiError as err:
            response = err.response()
        else:
            try:
                response = self._answer(method, path, user, raw_body)
            except _ApiError as err:
                response = err.response()
            except Exception:
                logger.exception("cluster %s: %s %s failed", cluster.name, method, path)
                response = ApiResponse(
                    500, {"error_code": "internal_error", "description": "internal error"}
                )
        cluster._record(
            RecordedRequest(method, path, response.status, at, user.name if user else None)
        )
        logger.debug("cluster %s: %s %s -> %s", cluster.name, method, path, response.status)
        return response

    def _answer(self, method: str, path: str, user: _User | None, raw_body: bytes) -> ApiResponse:
        cluster = self._cluster
        fault = cluster._take_fault(method, path)
        if fault is not None:
            if fault.delay > 0:
                cluster._sleep(fault.delay)
            if fault.status:
                return ApiResponse(fault.status, fault.body)
        if user is None:
            raise _ApiError(
                401,
                "unauthorized",
                "missing or wrong credentials",
                headers={"WWW-Authenticate": 'Basic realm="Redis Enterprise"'},
            )
        route, params = self.router.resolve(method, path, cluster._lowest_version())
        if route.permission not in ROLE_PERMISSIONS.get(user.role, frozenset({VIEW_CLUSTER_INFO})):
            raise _ApiError(
                403,
                "insufficient_permissions",
                f"role {user.role!r} lacks the {route.permission} permission",
            )
        return route.handler(ApiRequest(method, path, params, user.name, raw_body))

    # ---- handlers: one per route; the docstring names the verb and path

    def get_nodes(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/nodes"""
        return ApiResponse(200, [self._node_json(node) for node in self._cluster._nodes_snapshot()])

    def get_node(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/nodes/<uid>"""
        for node in self._cluster._nodes_snapshot():
            if str(node.uid) == req.params["uid"]:
                return ApiResponse(200, self._node_json(node))
        raise _ApiError(404, "node_not_found", f"no node {req.params['uid']}")

    def _node_json(self, node: _Node) -> dict[str, Any]:
        return {
            "uid": node.uid,
            "software_version": node.software_version,
            "status": "active",
            "addr": self._cluster._connect_host,
        }

    def get_cluster(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/cluster"""
        certs = self._cluster._certs_snapshot()
        return ApiResponse(
            200,
            {
                "name": self._cluster.name,
                "proxy_certificate": certs["proxy"].chain_pem,
                "syncer_certificate": certs["syncer"].chain_pem,
                "alert_settings": {
                    "cluster_certs_about_to_expire": {"enabled": True, "threshold": "30"}
                },
            },
        )

    def get_certificates(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/cluster/certificates"""
        body: dict[str, str] = {}
        for name, installed in sorted(self._cluster._certs_snapshot().items()):
            body[f"{name}_cert"] = installed.chain_pem
            if installed.key_pem is not None:
                body[f"{name}_key"] = installed.key_pem
        return ApiResponse(200, body)

    def put_certificates(self, req: ApiRequest) -> ApiResponse:
        """PUT: /v1/cluster/certificates (7.22.2+): validate every item, then apply them all."""
        body = req.json()
        if not isinstance(body, dict) or set(body) != {"certificates"}:
            raise _invalid_request('the body must be exactly {"certificates": [...]}')
        raw_items = body["certificates"]
        if not isinstance(raw_items, list) or not raw_items:
            raise _invalid_request("'certificates' must be a non-empty list")
        items = [_parse_item(raw, f"certificates[{i}]") for i, raw in enumerate(raw_items)]
        names = [item.name for item in items]
        for name in names:
            self._cluster._check_name(name)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise _invalid_request(f"certificate name(s) given twice: {', '.join(duplicates)}")
        internode = [name for name in names if name in INTERNODE_NAMES]
        if internode and len(internode) != len(names):
            raise _invalid_request(
                "internode certificates must be sent in a request of their own "
                f"({', '.join(internode)} sent with {', '.join(sorted(set(names) - set(internode)))})"
            )
        now = self._cluster._now()
        validated = [_validate_certificate(item, now=now, bad_cert_status=400) for item in items]
        self._cluster._apply(validated)
        return ApiResponse(200, {}, close="api" in names)

    def put_update_cert(self, req: ApiRequest) -> ApiResponse:
        """PUT: /v1/cluster/update_cert (every version, deprecated on 7.22.2+)."""
        item = _parse_item(req.json(), "the body")
        self._cluster._check_name(item.name)
        installed = _validate_certificate(item, now=self._cluster._now(), bad_cert_status=404)
        self._cluster._apply([installed])
        return ApiResponse(200, {}, close=item.name == "api")

    # ---- databases (the model is in vault_bridge.testing.databases)

    def _world(self, call: Callable[[], Any]) -> ApiResponse:
        try:
            return ApiResponse(200, call())
        except DatabaseError as err:
            raise _ApiError(err.status, err.error_code, err.description) from err

    def get_crdbs(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/crdbs"""
        return self._world(lambda: self._cluster.world.crdbs_json(self._cluster.name))

    def get_crdb(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/crdbs/<guid>"""
        guid = req.params["guid"]
        return self._world(lambda: self._cluster.world.crdb_json(self._cluster.name, guid))

    def post_crdb_update(self, req: ApiRequest) -> ApiResponse:
        """POST: /v1/crdbs/<guid>/updates (``{"force_update": true}``): a task object."""
        body = req.json()
        guid = req.params["guid"]
        return self._world(
            lambda: self._cluster.world.create_update(self._cluster.name, guid, body)
        )

    def get_crdb_tasks(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/crdb_tasks"""
        return self._world(lambda: self._cluster.world.tasks_json(self._cluster.name))

    def get_crdb_task(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/crdb_tasks/<task_id>"""
        task_id = req.params["task_id"]
        return self._world(lambda: self._cluster.world.task_json(self._cluster.name, task_id))

    def get_bdbs(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/bdbs"""
        return self._world(lambda: self._cluster.world.bdbs_json(self._cluster.name))

    def get_bdb(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/bdbs/<uid>"""
        uid = self._uid(req)
        return self._world(lambda: self._cluster.world.bdb_json(self._cluster.name, uid))

    def put_bdb(self, req: ApiRequest) -> ApiResponse:
        """PUT: /v1/bdbs/<uid>: 404 unknown, 406 invalid_certificate / certificate_expired /
        duplicated_certs; 409 (busy) by ``inject_fault``."""
        uid = self._uid(req)
        body = req.json()
        now = self._cluster._now()
        return self._world(
            lambda: self._cluster.world.update_bdb(self._cluster.name, uid, body, now)
        )

    @staticmethod
    def _uid(req: ApiRequest) -> int:
        raw = req.params["uid"]
        if not raw.isdigit():
            raise _ApiError(404, "db_not_exist", f"no database {raw}")
        return int(raw)


# --------------------------------------------------------------------------- TLS listeners


class _TLSServer(socketserver.TCPServer):
    """A TCP listener whose connections are TLS-wrapped, each in its own thread.

    The handshake happens in the connection's thread with the context current at that moment,
    so a stalled client blocks nobody and a new connection sees the newest certificate.
    """

    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[socketserver.BaseRequestHandler],
        *,
        label: str,
        context: Callable[[], ssl.SSLContext],
        cluster: SimulatedCluster,
    ) -> None:
        self.label = label
        self.cluster = cluster
        self._context = context
        self._lock = threading.Lock()
        self._wakers: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._closing = False
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            super().__init__(address, handler)
            self.socket.setblocking(False)
        except BaseException:
            self._wake_r.close()
            self._wake_w.close()
            raise

    def serve(self) -> None:
        """Accept until :meth:`wake`; each connection gets its own daemon thread."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        sock, address = self.socket.accept()
                    except OSError:
                        continue
                    self._start_connection(sock, address)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _start_connection(self, sock: socket.socket, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(
            target=self._serve_connection,
            args=(sock, address),
            name=f"{self.label}-conn",
            daemon=True,
        )
        with self._lock:
            if self._closing:
                sock.close()
                return
            self._threads.add(thread)
            thread.start()  # under the lock: close_connections() never joins an unstarted thread

    def _serve_connection(self, raw: socket.socket, address: Any) -> None:
        # A duplicate of the descriptor lets close_connections() shut the connection down
        # whichever object (plain or TLS socket) holds it at that moment.
        waker = raw.dup()
        with self._lock:
            if self._closing:
                waker.close()
                raw.close()
                self._threads.discard(threading.current_thread())
                return
            self._wakers.add(waker)
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT)
            try:
                tls = self._context().wrap_socket(raw, server_side=True)
            except OSError as exc:
                logger.debug("%s: handshake with %s failed: %s", self.label, address, exc)
                return
            with tls:
                try:
                    self.finish_request(tls, address)
                except OSError as exc:
                    logger.debug("%s: connection from %s ended: %s", self.label, address, exc)
                except Exception:
                    logger.exception("%s: connection from %s failed", self.label, address)
        finally:
            raw.close()  # a no-op once wrap_socket has taken the descriptor
            with self._lock:
                self._wakers.discard(waker)
                waker.close()
                self._threads.discard(threading.current_thread())

    def close_connections(self) -> None:
        """Shut every open connection down and wait for their threads."""
        with self._lock:
            self._closing = True
            for waker in self._wakers:
                with contextlib.suppress(OSError):
                    waker.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()


class _QuietHandler(BaseHTTPRequestHandler):
    """HTTP over an already-wrapped TLS socket; access lines go to the debug log."""

    server_version = "SimulatedRedisEnterprise/1.0"
    sys_version = ""
    timeout = IDLE_TIMEOUT

    @property
    def cluster(self) -> SimulatedCluster:
        return cast(_TLSServer, self.server).cluster

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s: " + format, cast(_TLSServer, self.server).label, *args)

    def _send(
        self,
        status: int,
        content_type: str,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class _RestHandler(_QuietHandler):
    """The REST API: HTTP/1.1 keep-alive, JSON in and out; the logic is in :class:`_RestApi`."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_POST = do_DELETE = do_PATCH = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _ApiError(411, "length_required", "send the body with Content-Length", close=True)
        raw_length = self.headers.get("Content-Length") or "0"
        try:
            length = int(raw_length)
        except ValueError as exc:
            raise _ApiError(400, "invalid_request", "bad Content-Length", close=True) from exc
        if length < 0 or length > MAX_BODY_BYTES:
            raise _ApiError(413, "payload_too_large", "the body is too large", close=True)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        response = self.cluster._rest.handle(
            self.command, self.path, self.headers.get("Authorization"), self._read_body
        )
        headers = dict(response.headers)
        if response.close:
            headers["Connection"] = "close"  # also makes BaseHTTPRequestHandler close
        payload = json.dumps(response.body).encode()
        self._send(response.status, "application/json", payload, headers)


class _CmHandler(_QuietHandler):
    """The Cluster Manager UI: one small page on every path."""

    def do_GET(self) -> None:
        page = f"<!doctype html><title>Redis Enterprise: {self.cluster.name}</title>\n"
        self._send(200, "text/html; charset=utf-8", page.encode())


class _MetricsHandler(_QuietHandler):
    """The Prometheus exporter: ``node_cert_expiration_seconds`` per certificate."""

    def do_GET(self) -> None:
        if urlsplit(self.path).path not in ("/metrics", "/v2"):
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        text = self.cluster._metrics_text()
        self._send(200, "text/plain; version=0.0.4; charset=utf-8", text.encode())


class _ProxyHandler(socketserver.BaseRequestHandler):
    """A database endpoint: after the handshake, ``+PONG`` to every read, until EOF."""

    def handle(self) -> None:
        conn = cast(ssl.SSLSocket, self.request)
        conn.settimeout(IDLE_TIMEOUT)
        while conn.recv(65536):
            conn.sendall(b"+PONG\r\n")


# --------------------------------------------------------------------------- the cluster


class SimulatedCluster:
    """A Redis Enterprise Software cluster on loopback: REST API, cm, exporter, one endpoint.

    Starts like a new cluster, with self-signed certificates for every name its version knows.
    Use it as a context manager (start/stop). ``requests`` records every REST request and
    ``install_count`` counts installed certificates (a bulk request of three counts three).
    """

    def __init__(
        self,
        name: str = "sim",
        *,
        software_version: str = "7.22.2-14",
        node_versions: list[str] | None = None,
        users: dict[str, tuple[str, str]] | None = None,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
        clock: Callable[[], datetime] | None = None,
        world: DatabaseWorld | None = None,
    ) -> None:
        """``world``: the databases, CRDBs and tasks, shared with the other clusters given the
        same one (an Active-Active database spanning them); a world of its own by default."""
        unknown = sorted(set(ports or {}) - set(LISTENERS))
        if unknown:
            raise ValueError(f"unknown listener(s) {unknown}; known: {', '.join(LISTENERS)}")
        self.name = name
        self.host = host
        self.requests: list[RecordedRequest] = []
        self.install_count = 0
        self._ports = {listener: int((ports or {}).get(listener, 0)) for listener in LISTENERS}
        self._connect_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self._clock: Callable[[], datetime] = clock or partial(datetime.now, UTC)
        self._users = {
            user: _User(user, password, role)
            for user, (password, role) in (DEFAULT_USERS if users is None else users).items()
        }
        self._lock = threading.RLock()
        self._nodes: list[_Node] = []
        self._certs: dict[str, _Installed] = {}
        self._faults: list[_Fault] = []
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._servers: dict[str, _TLSServer] = {}
        self._threads: list[threading.Thread] = []
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
        self._stopping = threading.Event()
        self._rest = _RestApi(self)
        self.set_software_version(software_version, node_versions)
        self.world = world if world is not None else DatabaseWorld()
        self.world.attach(self)

    # ---- lifecycle

    def start(self) -> None:
        """Start every listener; they accept connections when this returns."""
        with self._lock:
            if self._servers:
                raise RuntimeError(f"simulated cluster {self.name} is already running")
            self._stopping.clear()
            self._tls_dir = tempfile.TemporaryDirectory(prefix=f"vault-bridge-sim-{self.name}-")
            try:
                for listener in LISTENERS:
                    self._contexts[listener] = self._server_context(self._certs[listener])
                handlers: dict[str, type[socketserver.BaseRequestHandler]] = {
                    "api": _RestHandler,
                    "cm": _CmHandler,
                    "metrics_exporter": _MetricsHandler,
                    "proxy": _ProxyHandler,
                }
                for listener in LISTENERS:
                    self._servers[listener] = _TLSServer(
                        (self.host, self._ports[listener]),
                        handlers[listener],
                        label=f"sim-{self.name}-{listener}",
                        context=partial(self._context, listener),
                        cluster=self,
                    )
                    self._ports[listener] = int(self._servers[listener].server_address[1])
            except BaseException:
                servers, tls_dir = list(self._servers.values()), self._tls_dir
                self._servers, self._tls_dir = {}, None
                self._close(servers, [], tls_dir)
                raise
            for listener, server in self._servers.items():
                thread = threading.Thread(
                    target=server.serve, name=f"sim-{self.name}-{listener}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        logger.info(
            "simulated cluster %s (%s) listening: %s",
            self.name,
            self.software_version,
            ", ".join(f"{listener} {self.endpoint(listener)}" for listener in LISTENERS),
        )

    def stop(self) -> None:
        """Stop every listener, close every connection, join the threads. Idempotent."""
        self._stopping.set()  # ends injected delays early
        with self._lock:  # connection threads take the lock too: join them outside it
            servers, threads, tls_dir = list(self._servers.values()), self._threads, self._tls_dir
            self._servers, self._threads, self._tls_dir = {}, [], None
        self._close(servers, threads, tls_dir)
        if servers:
            logger.info("simulated cluster %s stopped", self.name)

    @staticmethod
    def _close(
        servers: list[_TLSServer],
        threads: list[threading.Thread],
        tls_dir: tempfile.TemporaryDirectory[str] | None,
    ) -> None:
        for server in servers:
            server.wake()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        for server in servers:
            server.server_close()
            server.close_connections()
        if tls_dir is not None:
            tls_dir.cleanup()

    def __enter__(self) -> SimulatedCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- where it listens, what it serves

    @property
    def api_url(self) -> str:
        return f"https://{self.endpoint('api')}"

    def endpoint(self, name: str) -> str:
        """``host:port`` of one listener: "api", "cm", "metrics_exporter" or "proxy"."""
        if name not in LISTENERS:
            raise ValueError(f"no listener {name!r}; known: {', '.join(LISTENERS)}")
        port = self._ports[name]
        if not port:
            raise RuntimeError(f"simulated cluster {self.name} has not started: no {name} port")
        host = f"[{self._connect_host}]" if ":" in self._connect_host else self._connect_host
        return f"{host}:{port}"

    def installed_pem(self, name: str) -> str:
        """The chain (leaf first, as given) installed for a certificate name."""
        with self._lock:
            try:
                return self._certs[name].chain_pem
            except KeyError:
                raise KeyError(f"no {name!r} certificate installed on {self.name}") from None

    def api_ca_pem(self) -> str:
        """The PEM a client must trust for the current ``api`` certificate.

        The last certificate of the installed chain: the self-signed certificate itself on a
        new cluster. When a chain leaves its root out, this is the top intermediate; a client
        then trusts the root it got from Vault instead (or verifies with partial chains).
        """
        return split_pem_chain(self.installed_pem("api"))[-1]

    # ---- test controls

    def inject_fault(
        self,
        method: str,
        path: str,
        status: int,
        *,
        times: int = 1,
        delay: float = 0.0,
        body: dict[str, Any] | None = None,
    ) -> None:
        """The next ``times`` requests for ``method`` + exact ``path`` answer ``status`` after
        sleeping ``delay`` seconds; ``status`` 0 only delays them, then handles them normally."""
        if status != 0 and not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status}")
        if times < 1 or delay < 0:
            raise ValueError("times must be at least 1 and delay not negative")
        if body is None:
            body = {
                "error_code": "injected",
                "description": f"injected fault: {status} for {method.upper()} {path}",
            }
        with self._lock:
            self._faults.append(_Fault(method.upper(), path, status, times, delay, body))

    def add_crdb(
        self,
        name: str,
        *,
        participants: list[SimulatedCluster] | None = None,
        guid: str | None = None,
    ) -> str:
        """An Active-Active database with an instance on each participant (default: this
        cluster only; others must share this cluster's ``world``). Returns its GUID."""
        members = participants if participants is not None else [self]
        for other in members:
            if other.world is not self.world:
                raise ValueError(f"cluster {other.name} does not share {self.name}'s world")
        return self.world.add_crdb(name, members, guid=guid)

    def add_bdb(
        self,
        name: str,
        *,
        replica_of: list[tuple[SimulatedCluster, int]] | None = None,
        enforce_client_authentication: bool = True,
        client_certs: list[str] | None = None,
        source_fields: dict[str, Any] | None = None,
    ) -> int:
        """A database on this cluster; ``replica_of``: a Replica Of destination of each
        ``(source cluster, source uid)`` (see :meth:`DatabaseWorld.add_bdb`). Returns its uid."""
        return self.world.add_bdb(
            self,
            name,
            replica_of=replica_of or [],
            enforce_client_authentication=enforce_client_authentication,
            client_certs=client_certs or [],
            source_fields=source_fields,
        )

    def bdb(self, uid: int) -> dict[str, Any]:
        """A database as ``GET /v1/bdbs/<uid>`` returns it."""
        return self.world.bdb_json(self.name, uid)

    def outages(self) -> list[Outage]:
        """Every sync outage of the world this cluster belongs to (see :class:`Outage`)."""
        return self.world.outages()

    def set_software_version(self, version: str, node_versions: list[str] | None = None) -> None:
        """Set every node to ``version`` (or each to ``node_versions``), as an upgrade would.

        Certificates a newer version brings (ldap_client, internode) appear self-signed.
        """
        versions = list(node_versions) if node_versions is not None else [version] * 3
        if not versions:
            raise ValueError("a cluster has at least one node")
        for item in [version, *versions]:
            parse_version(item)
        with self._lock:
            self.software_version = version
            self._nodes = [_Node(uid, v) for uid, v in enumerate(versions, start=1)]
            self._add_default_certificates()

    # ---- state, used by the REST API and the listeners

    def _add_default_certificates(self) -> None:
        version = self._lowest_version()
        now = self._now()
        for name in sorted(KNOWN_NAMES - {MTLS_TRUSTED_CA} - set(self._certs)):
            if version < NAME_MIN_VERSION.get(name, ()):
                continue
            key: CertificateIssuerPrivateKeyTypes
            if name in INTERNODE_NAMES:
                key = _cached_rsa_key(sorted(INTERNODE_NAMES).index(name))
            else:
                key = ec.generate_private_key(ec.SECP256R1())
            chain = _self_signed(f"{name}.{self.name}.sim", key, self.host, now)
            leaf = x509.load_pem_x509_certificate(chain.encode())
            self._certs[name] = _Installed(name, chain, _key_pem(key), leaf)

    def _now(self) -> datetime:
        return self._clock()

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _lowest_version(self) -> Version:
        with self._lock:
            return min(parse_version(node.software_version) for node in self._nodes)

    def _nodes_snapshot(self) -> list[_Node]:
        with self._lock:
            return list(self._nodes)

    def _certs_snapshot(self) -> dict[str, _Installed]:
        with self._lock:
            return dict(self._certs)

    def _authenticate(self, authorization: str | None) -> _User | None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user = self._users.get(username)
        if user is None or not hmac.compare_digest(user.password.encode(), password.encode()):
            return None
        return user

    def _check_name(self, name: str) -> None:
        """403 for a name this cluster's version does not know."""
        if name not in KNOWN_NAMES or self._lowest_version() < NAME_MIN_VERSION.get(name, ()):
            raise _ApiError(403, "unknown_certificate_name", f"unknown certificate name {name!r}")

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.path == path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _apply(self, installed: list[_Installed]) -> None:
        """Install validated certificates all at once; new connections see them."""
        self.world.advance()  # tasks that started before this install saw the old certificates
        contexts: dict[str, ssl.SSLContext] = {}
        for item in installed:
            if item.name in LISTENERS and self._tls_dir is not None:
                try:
                    contexts[item.name] = self._server_context(item)
                except (ssl.SSLError, OSError) as exc:
                    raise _ApiError(
                        400, "invalid_certificate", f"{item.name}: TLS refused it: {exc}"
                    ) from exc
        with self._lock:
            for item in installed:
                self._certs[item.name] = item
            if self._servers:
                self._contexts.update(contexts)
            self.install_count += len(installed)
        self.world.certificates_changed(self.name)
        for item in installed:
            info = CertificateInfo.from_cert(item.leaf)
            logger.info(
                "cluster %s: installed %s (serial %s, not after %s, sha256 %s)",
                self.name,
                item.name,
                info.serial,
                info.not_after.isoformat(),
                info.fingerprint,
            )

    def _context(self, listener: str) -> ssl.SSLContext:
        with self._lock:
            return self._contexts[listener]

    def _server_context(self, installed: _Installed) -> ssl.SSLContext:
        """A server context for one certificate; the PEM lives on disk only while loading."""
        tls_dir = self._tls_dir
        if tls_dir is None:
            raise RuntimeError(f"simulated cluster {self.name} is not running")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The key goes to a 0600 file in the simulator's private 0700 directory, only while
        # OpenSSL loads it (load_cert_chain takes paths only).
        fd, path = tempfile.mkstemp(dir=tls_dir.name, suffix=".pem")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(installed.chain_pem.strip() + "\n")
                handle.write((installed.key_pem or "").strip() + "\n")
            context.load_cert_chain(path)
        finally:
            os.unlink(path)
        return context

    def _metrics_text(self) -> str:
        now = self._now()
        lines = [
            "# HELP node_cert_expiration_seconds Seconds until the certificate expires.",
            "# TYPE node_cert_expiration_seconds gauge",
        ]
        for name, installed in sorted(self._certs_snapshot().items()):
            remaining = (installed.leaf.not_valid_after_utc - now).total_seconds()
            lines.append(f'node_cert_expiration_seconds{{logical_name="{name}"}} {remaining:.0f}')
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    """Run one simulated cluster until SIGTERM or SIGINT; print where it listens as JSON."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # First thing: a signal sent while starting up still ends the run cleanly.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parser = argparse.ArgumentParser(
        prog="python -m vault_bridge.testing.simulator",
        description="Run a simulated Redis Enterprise Software cluster on loopback.",
    )
    parser.add_argument("--name", default="sim", help="cluster name (default: sim)")
    parser.add_argument("--version", default="7.22.2-14", help="software version of every node")
    parser.add_argument(
        "--node-version",
        action="append",
        metavar="VERSION",
        help="version of one node (repeat per node; overrides --version per node)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    for flag, listener in (
        ("--port-api", "api"),
        ("--port-cm", "cm"),
        ("--port-metrics", "metrics_exporter"),
        ("--port-proxy", "proxy"),
    ):
        parser.add_argument(flag, type=int, default=0, help=f"{listener} port (0: a free one)")
    parser.add_argument("--admin-user", default="admin@example.com")
    parser.add_argument("--admin-password-file", help="file holding the admin password")
    parser.add_argument("--api-ca-out", help="write the initial api certificate PEM here")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
    )

    admin_password = "admin-password"
    if args.admin_password_file:
        with open(args.admin_password_file, encoding="utf-8") as handle:
            admin_password = handle.read().rstrip("\r\n")
        if not admin_password:
            parser.error(f"{args.admin_password_file} is empty")
    users = {args.admin_user: (admin_password, "admin")}
    users.update({u: v for u, v in DEFAULT_USERS.items() if v[1] != "admin"})
    ports = {
        "api": args.port_api,
        "cm": args.port_cm,
        "metrics_exporter": args.port_metrics,
        "proxy": args.port_proxy,
    }
    try:
        cluster = SimulatedCluster(
            args.name,
            software_version=args.version,
            node_versions=args.node_version,
            users=users,
            host=args.host,
            ports=ports,
        )
    except ValueError as exc:
        parser.error(str(exc))

    with tempfile.TemporaryDirectory(prefix="vault-bridge-sim-") as scratch, cluster:
        ca_path = os.path.abspath(args.api_ca_out or os.path.join(scratch, "api-ca.pem"))
        partial_path = f"{ca_path}.{secrets.token_hex(4)}.tmp"
        with open(partial_path, "w", encoding="utf-8") as handle:
            handle.write(cluster.api_ca_pem())
        os.replace(partial_path, ca_path)
        print(
            json.dumps(
                {
                    "name": cluster.name,
                    "software_version": cluster.software_version,
                    "api_url": cluster.api_url,
                    "endpoints": {listener: cluster.endpoint(listener) for listener in LISTENERS},
                    "api_ca_file": ca_path,
                    "admin_user": args.admin_user,
                }
            ),
            flush=True,
        )
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
