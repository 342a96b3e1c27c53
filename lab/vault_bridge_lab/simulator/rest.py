"""The REST API of a simulated cluster: users, injected faults, the request pipeline (fault,
auth, route, role) and one handler per route."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from vault_bridge.models.certificates import split_pem_chain
from vault_bridge_lab.simulator.access import ECDSA_CHECK_MIN_VERSION, User
from vault_bridge_lab.simulator.certs import Installed, parse_item, validate_certificate
from vault_bridge_lab.simulator.databases import DatabaseError
from vault_bridge_lab.simulator.dbcerts import DB_CERTS_MIN_VERSION
from vault_bridge_lab.simulator.names import BULK_MIN_VERSION, INTERNODE_NAMES
from vault_bridge_lab.simulator.routing import (
    AUTHENTICATED,
    ROLE_PERMISSIONS,
    VIEW_ALL_USERS_INFO,
    VIEW_CLUSTER_INFO,
    ApiError,
    ApiRequest,
    ApiResponse,
    Router,
    invalid_request,
)

if TYPE_CHECKING:
    from vault_bridge_lab.simulator.cluster import SimulatedCluster

logger = logging.getLogger(__name__)

DEFAULT_USERS: Final[Mapping[str, tuple[str, str]]] = {
    "admin@example.com": ("admin-password", "admin"),
    "viewer@example.com": ("viewer-password", "db_viewer"),
}


@dataclass(frozen=True)
class RecordedRequest:
    """One REST request as the cluster answered it; ``at`` is ``time.monotonic()`` on arrival."""

    method: str
    path: str  # without the query string
    status: int
    at: float
    user: str | None  # the authenticated user, None when credentials were missing or wrong
    client_certificate: bool = False  # the connection presented a verified client certificate


@dataclass(frozen=True)
class Node:
    uid: int
    software_version: str


@dataclass
class Fault:
    method: str
    path: str
    status: int
    remaining: int
    delay: float
    body: Any


class RestApi:
    """The REST API of one simulated cluster: request pipeline, route table and handlers."""

    def __init__(self, cluster: SimulatedCluster) -> None:
        self._cluster = cluster
        self.router = Router()
        add = self.router.add
        add("GET", "/v1/nodes", self.get_nodes)
        add("GET", "/v1/nodes/<uid>", self.get_node)
        add("GET", "/v1/cluster", self.get_cluster)
        add("PUT", "/v1/cluster", self.put_cluster)
        add("GET", "/v1/ocsp", self.get_ocsp)
        add("PUT", "/v1/ocsp", self.put_ocsp)
        add("GET", "/v1/ocsp/status", self.get_ocsp_status)
        add("POST", "/v1/ocsp/test", self.post_ocsp_test)
        add("POST", "/v1/users", self.post_user)
        add("GET", "/v1/cluster/certificates", self.get_certificates)
        add("PUT", "/v1/cluster/certificates", self.put_certificates, min_version=BULK_MIN_VERSION)
        add("PUT", "/v1/cluster/update_cert", self.put_update_cert)
        add("GET", "/v1/crdbs", self.get_crdbs)
        add("GET", "/v1/crdbs/<guid>", self.get_crdb)
        add("POST", "/v1/crdbs/<guid>/updates", self.post_crdb_update)
        add("GET", "/v1/crdb_tasks", self.get_crdb_tasks)
        add("GET", "/v1/crdb_tasks/<task_id>", self.get_crdb_task)
        add("GET", "/v1/bdbs", self.get_bdbs)
        since = DB_CERTS_MIN_VERSION
        add("GET", "/v1/bdbs/certificates", self.get_bdb_certs, min_version=since)
        add("GET", "/v1/bdbs/<uid>/certificates", self.get_bdb_cert, min_version=since)
        add("POST", "/v1/bdbs/<uid>/certificates", self.post_bdb_cert, min_version=since)
        add("DELETE", "/v1/bdbs/<uid>/certificates", self.delete_bdb_cert, min_version=since)
        add("GET", "/v1/bdbs/<uid>", self.get_bdb)
        add("PUT", "/v1/bdbs/<uid>", self.put_bdb)
        # In the OpenAPI document, which gives no first version (UNDOCUMENTED): served from
        # 7.22.2, the version that brings the other endpoints it describes; older clusters
        # answer 404 and the client falls back to GET /v1/users.
        add(
            "GET",
            "/v1/users/role",
            self.get_user_role,
            permission=AUTHENTICATED,
            min_version=BULK_MIN_VERSION,
        )
        add("GET", "/v1/users", self.get_users, permission=VIEW_ALL_USERS_INFO)

    def handle(
        self,
        method: str,
        target: str,
        authorization: str | None,
        read_body: Callable[[], bytes],
        *,
        headers: Mapping[str, str] | None = None,
        peer: x509.Certificate | None = None,
    ) -> ApiResponse:
        """Answer one request: body, injected fault, auth (401), route (404/405), role (403).

        ``peer``: the client certificate the TLS layer verified (mutual TLS), if any."""
        cluster = self._cluster
        at = time.monotonic()
        path = urlsplit(target).path
        user = cluster._authenticate(authorization, peer)
        try:
            raw_body = read_body()  # an OSError here: the client went away, nothing to answer
        except ApiError as err:
            response = err.response()
        else:
            try:
                query = parse_qs(urlsplit(target).query, keep_blank_values=True)
                response = self._answer(method, path, user, raw_body, headers or {}, query)
            except ApiError as err:
                response = err.response()
            except Exception:
                logger.exception("cluster %s: %s %s failed", cluster.name, method, path)
                response = ApiResponse(
                    500, {"error_code": "internal_error", "description": "internal error"}
                )
        cluster._record(
            RecordedRequest(
                method, path, response.status, at, user.name if user else None, peer is not None
            )
        )
        logger.debug("cluster %s: %s %s -> %s", cluster.name, method, path, response.status)
        return response

    def _answer(
        self,
        method: str,
        path: str,
        user: User | None,
        raw_body: bytes,
        headers: Mapping[str, str],
        query: Mapping[str, list[str]],
    ) -> ApiResponse:
        cluster = self._cluster
        fault = cluster._take_fault(method, path)
        if fault is not None:
            if fault.delay > 0:
                cluster._sleep(fault.delay)
            if fault.status:
                return ApiResponse(fault.status, fault.body)
        if user is None:
            headers = {}
            if cluster.access.settings["control_plane_basic_authentication"]:
                headers["WWW-Authenticate"] = 'Basic realm="Redis Enterprise"'
            raise ApiError(401, "unauthorized", "missing or wrong credentials", headers=headers)
        route, params = self.router.resolve(method, path, cluster._lowest_version())
        granted = ROLE_PERMISSIONS.get(user.role, frozenset({VIEW_CLUSTER_INFO}))
        if route.permission != AUTHENTICATED and route.permission not in granted:
            raise ApiError(
                403,
                "insufficient_permissions",
                f"role {user.role!r} lacks the {route.permission} permission",
            )
        lowered = {k.lower(): v for k, v in headers.items()}
        return route.handler(ApiRequest(method, path, params, user.name, raw_body, query, lowered))

    # ---- handlers: one per route; the docstring names the verb and path

    def get_nodes(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/nodes"""
        return ApiResponse(200, [self._node_json(node) for node in self._cluster._nodes_snapshot()])

    def get_node(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/nodes/<uid>"""
        for node in self._cluster._nodes_snapshot():
            if str(node.uid) == req.params["uid"]:
                return ApiResponse(200, self._node_json(node))
        raise ApiError(404, "node_not_found", f"no node {req.params['uid']}")

    def _node_json(self, node: Node) -> dict[str, Any]:
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
                **self._cluster.access.settings,
            },
        )

    def put_cluster(self, req: ApiRequest) -> ApiResponse:
        """PUT: /v1/cluster: the access settings (mTLS, Basic authentication)."""
        body = req.json()
        if not isinstance(body, dict) or not body:
            raise invalid_request("the body must be a non-empty JSON object")
        read_only = sorted(set(body) & {"name", "proxy_certificate", "syncer_certificate"})
        if read_only:
            raise invalid_request(f"read-only field(s): {', '.join(read_only)}")
        unknown = sorted(set(body) - set(self._cluster.access.settings))
        if unknown:
            raise invalid_request(f"unknown field(s): {', '.join(unknown)}")
        self._cluster.access.update(body, self._cluster._lowest_version())
        self._cluster._refresh_api_context()
        return self.get_cluster(req)

    # ---- OCSP (the model is in vault_bridge_lab.simulator.ocsp)

    def _proxy(self) -> tuple[x509.Certificate, x509.Certificate | None]:
        installed = self._cluster._certs_snapshot()["proxy"]
        chain = split_pem_chain(installed.chain_pem)
        issuer = x509.load_pem_x509_certificate(chain[1].encode()) if len(chain) > 1 else None
        return installed.leaf, issuer

    def get_ocsp(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/ocsp"""
        return ApiResponse(200, self._cluster.ocsp.config_json(self._proxy()[0]))

    def put_ocsp(self, req: ApiRequest) -> ApiResponse:
        """PUT: /v1/ocsp"""
        return ApiResponse(200, self._cluster.ocsp.update(req.json(), self._proxy()[0]))

    def get_ocsp_status(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/ocsp/status"""
        return ApiResponse(200, self._cluster.ocsp.cached(self._proxy()[0]))

    def post_ocsp_test(self, req: ApiRequest) -> ApiResponse:
        """POST: /v1/ocsp/test"""
        return ApiResponse(200, self._cluster.ocsp.test(*self._proxy()))

    def post_user(self, req: ApiRequest) -> ApiResponse:
        """POST: /v1/users (a ``regular`` or a ``certificate`` user)."""
        user = self._cluster.access.create_user(req.json())
        return ApiResponse(200, self._user_json(user))

    @staticmethod
    def _user_json(user: User) -> dict[str, Any]:
        out: dict[str, Any] = {
            "email": user.name,
            "role": user.role,
            "auth_method": user.auth_method,
        }
        if user.auth_method == "certificate":
            out["certificate_subject_line"] = user.certificate_subject_line
        return out

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
            raise invalid_request('the body must be exactly {"certificates": [...]}')
        raw_items = body["certificates"]
        if not isinstance(raw_items, list) or not raw_items:
            raise invalid_request("'certificates' must be a non-empty list")
        items = [parse_item(raw, f"certificates[{i}]") for i, raw in enumerate(raw_items)]
        names = [item.name for item in items]
        for name in names:
            self._cluster._check_name(name)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise invalid_request(f"certificate name(s) given twice: {', '.join(duplicates)}")
        internode = [name for name in names if name in INTERNODE_NAMES]
        if internode and len(internode) != len(names):
            raise invalid_request(
                "internode certificates must be sent in a request of their own "
                f"({', '.join(internode)} sent with {', '.join(sorted(set(names) - set(internode)))})"
            )
        now = self._cluster._now()
        validated = [validate_certificate(item, now=now, bad_cert_status=400) for item in items]
        for installed in validated:
            self._check_ciphers(installed)
        return self._install(validated, close="api" in names)

    def put_update_cert(self, req: ApiRequest) -> ApiResponse:
        """PUT: /v1/cluster/update_cert (every version, deprecated on 7.22.2+)."""
        item = parse_item(req.json(), "the body")
        self._cluster._check_name(item.name)
        installed = validate_certificate(item, now=self._cluster._now(), bad_cert_status=404)
        self._check_ciphers(installed)
        return self._install([installed], close=item.name == "api")

    def _install(self, validated: list[Any], *, close: bool) -> ApiResponse:
        """Apply an install after ``install_delay`` seconds; while ``partial_installs`` lasts,
        the install is applied (the nodes that answered switched, and so does what the read-back
        sees) but the answer is 409 "not all nodes have been updated"."""
        cluster = self._cluster
        if cluster.install_delay > 0:
            cluster._sleep(cluster.install_delay)
        cluster._apply(validated)
        if cluster._take_partial():
            raise ApiError(409, "not_all_nodes_updated", "not all nodes have been updated")
        return ApiResponse(200, {}, close=close)

    def _check_ciphers(self, installed: Installed) -> None:
        """8.2+: an ECDSA certificate is refused when only RSA ciphers would serve it."""
        if self._cluster._lowest_version() < ECDSA_CHECK_MIN_VERSION:
            return
        if isinstance(installed.leaf.public_key(), ec.EllipticCurvePublicKey) and (
            self._cluster.access.rsa_only(installed.name)
        ):
            # UNDOCUMENTED: the error code (the release notes name the refusal, not its body).
            raise invalid_request(
                f"{installed.name}: an ECDSA certificate needs ECDSA ciphers; only RSA ciphers "
                "are configured"
            )

    # ---- databases (the model is in vault_bridge_lab.simulator.world)

    def _world(self, call: Callable[[], Any]) -> ApiResponse:
        """bdb and CRDB errors carry ``error_code`` + ``message`` (requests/bdbs/_index.md)."""
        try:
            return ApiResponse(200, call())
        except DatabaseError as err:
            raise ApiError(
                err.status, err.error_code, err.description, text_field="message"
            ) from err

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
        task_id = req.headers.get("x-task-id")
        return self._world(
            lambda: self._cluster.world.create_update(
                self._cluster.name, guid, body, task_id=task_id, now_utc=self._cluster._now()
            )
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

    # ---- a database's own proxy certificate (vault_bridge_lab.simulator.dbcerts)

    def _existing_uid(self, req: ApiRequest) -> int:
        uid = self._uid(req)
        self._world(lambda: self._cluster.world.bdb_json(self._cluster.name, uid))  # 404
        return uid

    def get_bdb_certs(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/bdbs/certificates"""
        return ApiResponse(200, self._cluster.db_certs.listing(dict(req.query)))

    def get_bdb_cert(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/bdbs/<uid>/certificates"""
        uid = self._existing_uid(req)
        installed = self._cluster.db_certs.get(uid)
        if installed is None:
            raise ApiError(
                404,
                "not_found",
                f"database {uid} has no certificate of its own",
                text_field="message",
            )
        return ApiResponse(200, self._cluster.db_certs.json(uid, installed))

    def post_bdb_cert(self, req: ApiRequest) -> ApiResponse:
        """POST: /v1/bdbs/<uid>/certificates[?dry_run]: validate, then set (unless dry_run)."""
        uid = self._existing_uid(req)
        dry_run = req.query.get("dry_run", ["false"])[0].lower() in ("", "true", "1")
        installed = self._cluster.db_certs.check(
            req.json(), now=self._cluster._now(), extra_check=self._check_ciphers
        )
        if not dry_run:
            self._cluster._set_db_certificate(uid, installed)
        return ApiResponse(200, self._cluster.db_certs.json(uid, installed))

    def delete_bdb_cert(self, req: ApiRequest) -> ApiResponse:
        """DELETE: /v1/bdbs/<uid>/certificates"""
        uid = self._existing_uid(req)
        if not self._cluster._delete_db_certificate(uid):
            raise ApiError(
                404,
                "not_found",
                f"database {uid} has no certificate of its own",
                text_field="message",
            )
        return ApiResponse(200, {})

    @staticmethod
    def _uid(req: ApiRequest) -> int:
        raw = req.params["uid"]
        if not raw.isdigit():
            raise ApiError(404, "db_not_exist", f"no database {raw}", text_field="message")
        return int(raw)

    # ---- users

    def get_user_role(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/users/role (the OpenAPI document): the authenticated user's role."""
        user = next(u for u in self._cluster.access.users() if u.name == req.user)
        return ApiResponse(200, {"role": user.role})

    def get_users(self, req: ApiRequest) -> ApiResponse:
        """GET: /v1/users: every user (uid, email, role); needs view_all_users_info."""
        users = sorted(self._cluster.access.users(), key=lambda u: u.name)
        return ApiResponse(
            200,
            [
                {"uid": uid, "name": user.name, **self._user_json(user)}
                for uid, user in enumerate(users, start=1)
            ],
        )
