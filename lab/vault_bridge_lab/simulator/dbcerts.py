"""Databases with a proxy certificate of their own, on a simulated cluster (the OpenAPI
document's ``/v1/bdbs/{uid}/certificates`` and ``/v1/bdbs/certificates``,
``BdbProxyCertificate`` and ``BdbProxyCertificateSetRequest``).

- ``POST /v1/bdbs/<uid>/certificates[?dry_run]`` with exactly ``cert`` and ``private_key``:
  the checks of a proxy certificate (key match, expiry, key type, EKUs, the 8.2 cipher rule);
  ``dry_run`` validates and changes nothing;
- ``GET``/``DELETE /v1/bdbs/<uid>/certificates``: 404 for an unknown database or one without
  a certificate of its own;
- ``GET /v1/bdbs/certificates[?expires_before=&tls_mode=&page=&page_size=]``: the list;
- each database with a certificate of its own gets a TLS endpoint of its own that serves it
  (:meth:`SimulatedCluster.bdb_endpoint`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from vault_bridge_lab.simulator.certs import CertItem, Installed, validate_certificate
from vault_bridge_lab.simulator.names import Version
from vault_bridge_lab.simulator.routing import ApiError


def invalid_request(description: str) -> ApiError:
    """400 with ``error_code`` and ``message``, as the bdb endpoints answer."""
    return ApiError(400, "invalid_request", description, text_field="message")


#: UNDOCUMENTED: the version that brought the endpoints (a newer cluster is assumed).
DB_CERTS_MIN_VERSION: Final[Version] = (8, 2)


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise invalid_request(f"expires_before: not a timestamp: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class DbCertificates:
    """The certificates of the databases of one cluster, by uid."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._certs: dict[int, Installed] = {}

    def get(self, uid: int) -> Installed | None:
        with self._lock:
            return self._certs.get(uid)

    def all(self) -> dict[int, Installed]:
        with self._lock:
            return dict(self._certs)

    def check(
        self, body: Any, *, now: datetime, extra_check: Callable[[Installed], None]
    ) -> Installed:
        """Validate a set request (shape, then every check a proxy certificate passes)."""
        if not isinstance(body, dict):
            raise invalid_request("the body must be a JSON object")
        extra = sorted(set(body) - {"cert", "private_key"})
        if extra:
            raise invalid_request(f"unexpected key(s): {', '.join(extra)}")
        cert, key = body.get("cert"), body.get("private_key")
        if not isinstance(cert, str) or not cert.strip():
            raise invalid_request("'cert' is required and must be a PEM string")
        if not isinstance(key, str) or not key.strip():
            raise invalid_request("'private_key' is required and must be a PEM string")
        installed = validate_certificate(CertItem("proxy", cert, key), now=now, bad_cert_status=400)
        extra_check(installed)
        return installed

    def put(self, uid: int, installed: Installed) -> None:
        with self._lock:
            self._certs[uid] = installed

    def delete(self, uid: int) -> bool:
        with self._lock:
            return self._certs.pop(uid, None) is not None

    @staticmethod
    def json(uid: int, installed: Installed) -> dict[str, Any]:
        leaf = installed.leaf
        return {
            "bdb_uid": str(uid),
            "cert": installed.chain_pem,
            "not_before": leaf.not_valid_before_utc.isoformat().replace("+00:00", "Z"),
            "not_after": leaf.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        }

    def listing(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        unknown = sorted(set(query) - {"expires_before", "tls_mode", "page", "page_size"})
        if unknown:
            raise invalid_request(f"unknown parameter(s): {', '.join(unknown)}")
        items = sorted(self.all().items())
        if "expires_before" in query:
            limit = _when(query["expires_before"][0])
            items = [(u, c) for u, c in items if c.leaf.not_valid_after_utc < limit]
        if "tls_mode" in query and query["tls_mode"][0] not in (
            "disabled",
            "replica_ssl",
            "enabled",
        ):
            raise invalid_request("tls_mode must be one of disabled, replica_ssl, enabled")
        try:
            page = int(query.get("page", ["1"])[0])
            size = int(query.get("page_size", [str(len(items) or 1)])[0])
        except ValueError as exc:
            raise invalid_request("page and page_size must be integers") from exc
        if page < 1 or size < 1:
            raise invalid_request("page and page_size start at 1")
        chosen = items[(page - 1) * size : page * size]
        return [self.json(uid, cert) for uid, cert in chosen]


__all__ = ["DB_CERTS_MIN_VERSION", "ApiError", "DbCertificates"]
