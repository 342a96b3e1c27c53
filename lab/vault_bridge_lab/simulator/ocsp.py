"""OCSP stapling of a simulated cluster's proxy certificate (errors: ``error_code`` and
``message``, as the OCSP request pages say) (vendor pages
``security/certificates/ocsp-stapling.md``, ``references/rest-api/requests/ocsp/`` and the
``OcspConfig`` / ``OcspStatus`` schemas of the OpenAPI document).

- ``GET|PUT /v1/ocsp``: the configuration; ``responder_url`` is read-only, it is the OCSP URL in
  the installed proxy certificate's Authority Information Access; enabling OCSP without one
  answers 400 ``no_responder_url``;
- ``POST /v1/ocsp/test``: asks the responder now (a real OCSP request, by ``fetch``), returns
  the parsed status and caches it when OCSP is enabled;
- ``GET /v1/ocsp/status``: the cached status. A new proxy certificate drops the cache: until the
  responder is asked again its status is ``UNKNOWN``, which is what breaks client handshakes.
"""

from __future__ import annotations

import ssl
import threading
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from vault_bridge_lab.simulator.routing import ApiError

Fetch = Callable[[str, bytes], bytes]
#: Writable keys with their (minimum, maximum); ``ocsp_functionality`` is a boolean.
_RANGES: Final = {
    "query_frequency": (60, 86400),
    "recovery_frequency": (60, 86400),
    "recovery_max_tries": (1, 100),
    "response_timeout": (1, 60),
}
_TIME_FORMAT: Final = "%a, %d %b %Y %H:%M:%S GMT"


def responder_url(leaf: x509.Certificate) -> str:
    """The OCSP URL in the certificate's Authority Information Access ("" when none)."""
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return ""
    for item in aia:
        if item.access_method == AuthorityInformationAccessOID.OCSP:
            return str(item.access_location.value)
    return ""


def https_fetch(ca_file: str | None, timeout: float) -> Fetch:
    """POST an OCSP request (RFC 6960 over HTTP), verifying an https responder with ``ca_file``."""

    def fetch(url: str, body: bytes) -> bytes:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/ocsp-request"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            data: bytes = response.read()
            return data

    return fetch


def _time(value: datetime | None) -> str:
    return value.strftime(_TIME_FORMAT) if value else ""


class OcspModel:
    """The OCSP configuration and cached status of one cluster."""

    def __init__(self, fetch: Fetch | None) -> None:
        self._lock = threading.Lock()
        self._fetch = fetch
        self.config: dict[str, Any] = {
            "ocsp_functionality": False,
            "query_frequency": 3600,
            "recovery_frequency": 60,
            "recovery_max_tries": 5,
            "response_timeout": 1,
        }
        self._cached: dict[str, Any] | None = None
        self.queries = 0

    def config_json(self, proxy: x509.Certificate) -> dict[str, Any]:
        with self._lock:
            return {**self.config, "responder_url": responder_url(proxy)}

    def update(self, body: Any, proxy: x509.Certificate) -> dict[str, Any]:
        """``PUT /v1/ocsp``: validated like the schema (no extra keys, ranges, read-only)."""
        if not isinstance(body, dict) or not body:
            raise ApiError(
                400,
                "invalid_schema",
                "the body must be a non-empty JSON object",
                text_field="message",
            )
        if "responder_url" in body:
            raise ApiError(
                400, "invalid_schema", "responder_url is read-only", text_field="message"
            )
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key == "ocsp_functionality":
                if not isinstance(value, bool):
                    raise ApiError(
                        400, "invalid_schema", f"{key} must be a boolean", text_field="message"
                    )
            elif key in _RANGES:
                low, high = _RANGES[key]
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int)
                    or not low <= value <= high
                ):
                    raise ApiError(
                        400,
                        "invalid_schema",
                        f"{key} must be an integer {low}-{high}",
                        text_field="message",
                    )
            else:
                raise ApiError(
                    400, "invalid_schema", f"unknown field {key!r}", text_field="message"
                )
            changes[key] = value
        if changes.get("ocsp_functionality") and not responder_url(proxy):
            raise ApiError(
                400,
                "no_responder_url",
                "the proxy certificate names no OCSP responder",
                text_field="message",
            )
        with self._lock:
            self.config.update(changes)
        return self.config_json(proxy)

    def proxy_changed(self) -> None:
        with self._lock:
            self._cached = None

    def cached(self, proxy: x509.Certificate) -> dict[str, Any]:
        """``GET /v1/ocsp/status``"""
        with self._lock:
            if self._cached is not None:
                return dict(self._cached)
        return {"responder_url": responder_url(proxy), "cert_status": "UNKNOWN"}

    def test(self, proxy: x509.Certificate, issuer: x509.Certificate | None) -> dict[str, Any]:
        """``POST /v1/ocsp/test``: ask the responder now."""
        url = responder_url(proxy)
        if not url:
            raise ApiError(
                500, "no_responder_url", "no OCSP responder URL is configured", text_field="message"
            )
        if issuer is None or self._fetch is None:
            raise ApiError(
                500, "invalid_ocsp_response", "the responder cannot be asked", text_field="message"
            )
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(proxy, issuer, hashes.SHA1())
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        try:
            raw = self._fetch(url, request)
            answer = ocsp.load_der_ocsp_response(raw)
        except (OSError, ValueError) as exc:
            raise ApiError(
                500, "invalid_ocsp_response", f"the responder failed: {exc}", text_field="message"
            ) from exc
        self.queries += 1
        if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            status: dict[str, Any] = {"responder_url": url, "cert_status": "UNKNOWN"}
        else:
            status = {
                "responder_url": url,
                "cert_status": answer.certificate_status.name,  # GOOD, REVOKED, UNKNOWN
                "produced_at": _time(answer.produced_at_utc),
                "this_update": _time(answer.this_update_utc),
                "next_update": _time(answer.next_update_utc),
                "revocation_time": _time(answer.revocation_time_utc),
            }
        with self._lock:
            if self.config["ocsp_functionality"]:
                self._cached = dict(status)
        return status
