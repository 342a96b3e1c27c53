"""Trust of the cluster's API certificate (a pinned fingerprint) and the client certificate
of ``login = "certificate"``, as ``requests`` transport adapters and an SSL context.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from typing import Any

from requests.adapters import HTTPAdapter

from vault_bridge.models.certificates import IssuedCertificate

logger = logging.getLogger(__name__)


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
