"""The certificate endpoints: the cluster's certificates (read, bulk install, update_cert)
and a database's own proxy certificate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from vault_bridge.adapters.rest.errors import (
    DATABASE_STATUS_MESSAGES,
)
from vault_bridge.adapters.rest.transport import (
    ClusterTransport,
)
from vault_bridge.config.schema import MTLS_TRUSTED_CA
from vault_bridge.decisions.install import CertUpload
from vault_bridge.errors import CertificateError, ClusterError
from vault_bridge.models.certificates import CertName, InstalledCertificate
from vault_bridge.models.cluster import (
    Bdb,
)

logger = logging.getLogger(__name__)

# Certificates every cluster has and cannot delete (requests/cluster/certificates/_index.md,
# DELETE: 403 for a required certificate): an answer without one of them is malformed, never
# "the certificate is missing".
REQUIRED_CERTIFICATES = ("api", "cm", "proxy", "syncer")


class CertificateEndpoints(ClusterTransport):
    """The cluster's certificates and a database's own."""

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


def _pem_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())
