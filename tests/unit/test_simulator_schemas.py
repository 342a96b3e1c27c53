"""The simulator's schema facts and the client's assumptions, compared with the vendor's own
documents (the OpenAPI document and the object pages) where they are present."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from vault_bridge_lab.simulator.routing import ROLE_PERMISSIONS
from vault_bridge_lab.simulator.schemas import (
    CERTIFICATE_ITEM,
    CERTIFICATES_REQUEST,
    CRDB_MODIFY_REQUEST,
    INSTALL_TIMEOUT_SECONDS,
    REPLICA_SOURCE,
    REPLICA_SOURCE_STATUS,
    REPLICA_SOURCE_WRITABLE,
)

from vault_bridge.adapters.rest.certificates import REQUIRED_CERTIFICATES
from vault_bridge.config.schema import ClusterConfig
from vault_bridge.models.certificates import CertName
from vault_bridge.models.cluster import REPLICA_STATUS_ONLY, REPLICA_WRITABLE

# ../shared/reference/redis-docs next to the repository, or $VAULT_BRIDGE_REDIS_DOCS.
_CANDIDATES = [
    Path(os.environ.get("VAULT_BRIDGE_REDIS_DOCS", "/nonexistent")),
    *(p / "shared" / "reference" / "redis-docs" for p in Path(__file__).resolve().parents[3:5]),
]
DOCS = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[-1])
REST = DOCS / "references" / "rest-api"
OPENAPI = REST / "api-reference" / "openapi.json"

needs_openapi = pytest.mark.skipif(
    not OPENAPI.is_file(), reason=f"the vendor's OpenAPI document is not here ({OPENAPI})"
)
needs_pages = pytest.mark.skipif(
    not (REST / "objects").is_dir(), reason=f"the vendor's object pages are not here ({REST})"
)


def openapi() -> dict[str, Any]:
    return dict(json.loads(OPENAPI.read_text(encoding="utf-8")))


def schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(doc["components"]["schemas"][name])


def table_fields(page: Path) -> set[str]:
    """The names in the first column of a page's field table."""
    names = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\|\s*(?:<span[^>]*>)?([a-z_][a-z0-9_.]*)(?:</span>)?\s*\|", line)
        if match and match.group(1) not in ("name", "code", "key", "field", "method"):
            names.add(match.group(1))
    return names


@needs_openapi
def test_install_bodies_match_the_openapi_schemas() -> None:
    doc = openapi()
    item = schema(doc, "ClusterCertificateUpdate")
    assert set(item["properties"]) == CERTIFICATE_ITEM.fields
    assert item.get("additionalProperties") is False
    assert set(item.get("required", [])) == CERTIFICATE_ITEM.required
    request = schema(doc, "ClusterCertificatesUpdateRequest")
    assert set(request["properties"]) == CERTIFICATES_REQUEST.fields
    assert request.get("additionalProperties") is False


@needs_openapi
def test_install_timeout_matches_x_timeout_seconds() -> None:
    paths = openapi()["paths"]
    for path in ("/v1/cluster/certificates", "/v1/cluster/update_cert"):
        assert paths[path]["put"]["x-timeout-seconds"] == INSTALL_TIMEOUT_SECONDS
    assert ClusterConfig.model_fields["install_timeout"].default == INSTALL_TIMEOUT_SECONDS
    assert paths["/v1/cluster/update_cert"]["put"].get("deprecated") is True


@needs_openapi
def test_certificate_names_and_user_roles_match() -> None:
    doc = openapi()
    listed = {
        key.removesuffix("_cert")
        for key in schema(doc, "ClusterCertificatesResponse")["properties"]
        if key.endswith("_cert")
    }
    assert {n.value for n in CertName} <= listed
    assert set(REQUIRED_CERTIFICATES) <= listed
    roles = set(schema(doc, "RoleName")["enum"])
    assert set(ROLE_PERMISSIONS) <= roles
    role = doc["paths"]["/v1/users/role"]["get"]
    assert set(role["responses"]) == {"200", "403"}
    answer = role["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(answer["properties"]) == {"role"}


@needs_openapi
def test_cluster_errors_say_description() -> None:
    error = schema(openapi(), "cluster_Error")
    assert {"error_code", "description"} <= set(error["required"])


@needs_pages
def test_replica_source_fields_match_syncer_sources_page() -> None:
    documented = table_fields(REST / "objects" / "bdb" / "syncer_sources.md")
    assert documented == REPLICA_SOURCE_WRITABLE | REPLICA_SOURCE_STATUS
    assert REPLICA_SOURCE.read_only == REPLICA_SOURCE_STATUS
    # the client sends exactly what the simulator accepts as writable
    assert REPLICA_WRITABLE == REPLICA_SOURCE_WRITABLE
    assert REPLICA_STATUS_ONLY == REPLICA_SOURCE_STATUS


@needs_pages
def test_crdb_modify_request_fields_match_the_page() -> None:
    documented = table_fields(REST / "objects" / "crdb" / "modify_request.md")
    assert {f.split(".")[0] for f in documented} == CRDB_MODIFY_REQUEST.fields


@needs_pages
def test_bdb_errors_say_message() -> None:
    page = (REST / "requests" / "bdbs" / "_index.md").read_text(encoding="utf-8")
    assert "`error_code` and `message`" in page


@needs_pages
def test_crdb_updates_take_x_task_id() -> None:
    page = (REST / "requests" / "crdbs" / "updates.md").read_text(encoding="utf-8")
    assert re.search(r"\|\s*X-Task-ID\s*\|", page)
