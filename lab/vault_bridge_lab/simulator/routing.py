"""The REST layer's values and route table: requests, responses, documented errors, and
:class:`Router` (method + path template -> handler, permission, lowest version)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from vault_bridge_lab.simulator.names import Version


class ApiError(Exception):
    """A documented REST error: status plus ``{"error_code", "description"}`` (the cluster
    endpoints), or ``{"error_code", "message"}`` (bdb and CRDB endpoints,
    requests/bdbs/_index.md): ``text_field`` says which."""

    def __init__(
        self,
        status: int,
        error_code: str,
        description: str,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
        text_field: str = "description",
    ) -> None:
        super().__init__(f"{status} {error_code}: {description}")
        self.status = status
        self.error_code = error_code
        self.description = description
        self.headers = dict(headers or {})
        self.close = close
        self.text_field = text_field

    def response(self) -> ApiResponse:
        body = {"error_code": self.error_code, self.text_field: self.description}
        return ApiResponse(self.status, body, headers=self.headers, close=self.close)


def invalid_request(description: str) -> ApiError:
    return ApiError(400, "invalid_request", description)


@dataclass(frozen=True)
class ApiRequest:
    """What a route handler sees: the authenticated user and the matched path parameters."""

    method: str
    path: str
    params: Mapping[str, str]
    user: str
    raw_body: bytes = field(repr=False)
    query: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # the ones handlers read

    def json(self) -> Any:
        """The body as JSON; 400 when it is missing or not JSON."""
        if not self.raw_body.strip():
            raise invalid_request("a JSON body is required")
        try:
            return json.loads(self.raw_body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from exc


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any  # JSON, or bytes sent as they are (a malformed answer, injected)
    headers: Mapping[str, str] = field(default_factory=dict)
    close: bool = False  # answer with "Connection: close"


RouteHandler = Callable[[ApiRequest], ApiResponse]

VIEW_CLUSTER_INFO: Final = "view_cluster_info"
UPDATE_CLUSTER: Final = "update_cluster"
VIEW_ALL_USERS_INFO: Final = "view_all_users_info"
AUTHENTICATED: Final = "authenticated"  # any user with valid credentials
#: Permissions per role; a role not listed gets ``view_cluster_info`` only.
ROLE_PERMISSIONS: Final[Mapping[str, frozenset[str]]] = {
    "admin": frozenset({VIEW_CLUSTER_INFO, UPDATE_CLUSTER, VIEW_ALL_USERS_INFO}),
    "user_manager": frozenset({VIEW_CLUSTER_INFO, VIEW_ALL_USERS_INFO}),
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
                raise ApiError(
                    404, "not_found", f"{method} {path} is not supported by this version"
                )
            return route, match.groupdict()
        if allowed:
            raise ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}",
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        raise ApiError(404, "not_found", f"no such resource: {path}")
