"""The error shapes of the REST API: which statuses are retried, and what each status or
``error_code`` means for each group of endpoints; checks of malformed answers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from vault_bridge.errors import CertificateError

logger = logging.getLogger(__name__)

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


def _list(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise TypeError(f"expected a list, got {type(data).__name__}")
    return data


def _str_field(data: Any, key: str) -> str:
    if not isinstance(data, dict) or not isinstance(data.get(key), str):
        raise TypeError(f"expected an object with a string {key!r}")
    return str(data[key])
