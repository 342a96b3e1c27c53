"""The REST client against the vendor's documented API, with answers a real cluster (or a hostile
network) can give: each test names the defect of issue 9 it covers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from tests.conftest import OfflineCA, make_ca
from vault_bridge.adapters.crdb_runners import RestRunner
from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.config.settings import ClusterSettings
from vault_bridge.decisions.followup_plan import ClusterView, plan_followups
from vault_bridge.decisions.install import CertUpload
from vault_bridge.errors import ClusterError
from vault_bridge.models.certificates import CertChange, CertificateInfo, IssuedCertificate
from vault_bridge.models.cluster import (
    REPLICA_STATUS_ONLY,
    Bdb,
    ReplicaSource,
    UnsafeReplicaUpdate,
)

URL = "https://re-east.example.com:9443"


def settings(**kw: Any) -> ClusterSettings:
    base: dict[str, Any] = {
        "name": "east",
        "url": URL,
        "username": "admin@example.com",
        "password": SecretStr("pw"),
        "ca_file": None,
        "ca_fingerprint": None,
        "insecure_skip_verify": False,
        "timeout": 2.0,
        "crdb_update": "rest",
        "crdb_cli_path": "crdb-cli",
        "docker_container": None,
        "docker_host": None,
        "verify_endpoints": {},
        "certificates": (),
    }
    base.update(kw)
    return ClusterSettings(**base)


def answer(status: int, body: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response.headers["Content-Type"] = "application/json"
    return response


class FakeSession:
    """Stands in for the client's ``requests.Session``: answers in order, records requests."""

    auth: tuple[str, str] | None = ("admin@example.com", "pw")

    def __init__(self, answers: Iterable[requests.Response | Exception]) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.sent.append((method, url.removeprefix(URL), kwargs))
        item = self.answers.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        return None


def client_with(
    *answers: requests.Response | Exception, **kw: Any
) -> tuple[ClusterClient, FakeSession]:
    client = ClusterClient(settings(**kw), sleep=lambda s: None)
    session = FakeSession(answers)
    client._session = session  # type: ignore[assignment]
    return client, session


def all_certificates(ca: OfflineCA) -> dict[str, str]:
    return {f"{n}_cert": ca.leaf(f"{n}.example.com")[0] for n in ("api", "cm", "proxy", "syncer")}


# -- defect 2: bdb and CRDB errors carry error_code + message ------------------------------


def test_defect2_bdb_error_message_reaches_the_user() -> None:
    body = {"error_code": "invalid_schema", "message": "replica_sources[0]: read-only rdb_size"}
    client, _ = client_with(answer(400, body))
    with pytest.raises(ClusterError) as info:
        client.update_bdb(3, {"replica_sources": []})
    assert "invalid_schema: replica_sources[0]: read-only rdb_size" in str(info.value)
    assert info.value.status == 400


# -- defect 10 and 11: malformed answers are malformed, never "missing" ----------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"api_cert": "-----BEGIN CERT', "not JSON"),  # truncated
        (b"<html>proxy error</html>", "not JSON"),
        ({"status": "ok"}, "no api_cert, cm_cert, proxy_cert, syncer_cert"),
        ([], "expected an object"),
        ("certificates", "expected an object"),
        ("garbage-pem", "proxy_cert: not a PEM certificate"),
        ("number", "no proxy_cert"),
    ],
)
def test_defect10_11_malformed_certificate_lists(body: Any, why: str) -> None:
    ca = make_ca()
    if body == "garbage-pem":
        body = {**all_certificates(ca), "proxy_cert": "-----BEGIN CERTIFICATE-----\nxx\n"}
    elif body == "number":
        body = {**all_certificates(ca), "proxy_cert": 5}
    client, _ = client_with(answer(200, body))
    with pytest.raises(ClusterError) as info:
        client.certificates()
    text = str(info.value)
    assert "malformed answer" in text and why in text
    assert "\n" not in text  # one line


def test_defect11_a_complete_answer_still_reads() -> None:
    ca = make_ca()
    body = {**all_certificates(ca), "proxy_key": "secret", "sso_issuer_cert": "not ours"}
    client, _ = client_with(answer(200, body))
    assert sorted(client.certificates()) == ["api", "cm", "proxy", "syncer"]


@pytest.mark.parametrize(
    ("call", "body"),
    [
        ("nodes", {"uid": 1}),
        ("nodes", [{"software_version": "7.22.2"}]),
        ("nodes", [{"uid": 1, "software_version": 7}]),
        ("bdbs", {"bdbs": []}),
        ("bdbs", [{"uid": "x"}]),
        ("bdbs", [{"uid": 1, "replica_sources": ["not an object"]}]),
        ("crdbs", [{"name": "no guid"}]),
        ("crdb_tasks", [{"status": "queued"}]),
    ],
)
def test_defect10_malformed_database_answers(call: str, body: Any) -> None:
    client, _ = client_with(answer(200, body))
    with pytest.raises(ClusterError, match="malformed answer"):
        getattr(client, call)()


# -- defect 1: only the writable fields of a replica_sources entry are sent ----------------


def entry(**extra: Any) -> ReplicaSource:
    fields = {
        "uid": 1,
        "uri": "redis://admin:pw@east:12000",
        "encryption": True,
        "server_cert": "OLD",
        "client_cert": "CLIENT",
        "client_key": "KEY",
        "compression": 0,
        "replication_tls_sni": "east",
        "status": "out-of-sync",
        "last_error": "bad cert",
        "lag": 0,
        "last_update": "2026-01-01T00:00:00Z",
        "rdb_size": 10,
        "rdb_transferred": 5,
        "some_future_field": 1,
    }
    fields.update(extra)
    return ReplicaSource(fields)


def test_defect1_status_only_fields_are_never_sent() -> None:
    sent = entry().as_json(server_cert="NEW")
    assert not set(sent) & REPLICA_STATUS_ONLY
    assert "some_future_field" not in sent
    assert sent["server_cert"] == "NEW" and sent["client_key"] == "KEY"


def test_defect1_client_key_never_erased() -> None:
    fields = dict(entry().fields)
    del fields["client_key"]
    with pytest.raises(UnsafeReplicaUpdate):
        ReplicaSource(fields).as_json(server_cert="NEW")
    fields["client_cert"] = ""
    assert "client_key" not in ReplicaSource(fields).as_json(server_cert="NEW")


def test_defect1_unsafe_entry_is_a_planned_error_not_a_request() -> None:
    ca = make_ca()
    old, _ = ca.leaf("proxy-old")
    new, _ = ca.leaf("proxy-new")
    fields = dict(entry(server_cert=old).fields)
    del fields["client_key"]
    replica = Bdb.from_json({"uid": 5, "name": "replica", "replica_sources": [fields]})
    views = {
        "east": ClusterView("east", proxy_pem=new),
        "west": ClusterView("west", bdbs=(replica,)),
    }
    plan = plan_followups([CertChange("east", "proxy", new, old)], views, {})
    assert plan.server_cert_updates == ()
    assert "client_key" in plan.errors[("east", "proxy")]


# -- defect 3: installs have their own long timeout and are sent once ----------------------


def test_defect3_install_uses_the_long_timeout_and_is_not_retried() -> None:
    ca = make_ca()
    cert, key = ca.leaf("proxy.example.com")
    client, session = client_with(
        requests.exceptions.ReadTimeout("read timed out"), timeout=2.0, install_timeout=900.0
    )
    with pytest.raises(ClusterError) as info:
        client.put_certificates([CertUpload("proxy", cert, key)])
    assert info.value.retryable
    assert len(session.sent) == 1  # the caller reads back before anything is sent again
    assert session.sent[0][2]["timeout"] == (2.0, 900.0)


# -- defect 5: X-Task-ID, and a lost answer is polled, not posted twice ---------------------


def test_defect5_lost_post_answer_is_polled_by_its_task_id() -> None:
    task = {"id": "", "crdb_guid": "g1", "status": "finished"}
    client, session = client_with(
        requests.exceptions.ReadTimeout("read timed out"),
        answer(404, {"error_code": "task_not_found", "message": "no task"}),
        answer(200, task),  # the POST arrived after all: the task is there
    )

    def fill_id(method: str, url: str, **kwargs: Any) -> requests.Response:
        response = FakeSession.request(session, method, url, **kwargs)
        if url.startswith(URL + "/v1/crdb_tasks/"):
            task_id = url.rsplit("/", 1)[1]
            if response.status_code == 200:
                response._content = json.dumps({**task, "id": task_id}).encode()
        return response

    session.request = fill_id  # type: ignore[method-assign]
    runner = RestRunner(client, clock=lambda: 0.0, sleep=lambda s: None)
    result = runner.update("g1", on_sent=lambda: None)
    posts = [s for s in session.sent if s[0] == "POST"]
    assert len(posts) == 1
    task_id = posts[0][2]["headers"]["X-Task-ID"]
    assert result.task_id == task_id
    assert [s[1] for s in session.sent[1:]] == [f"/v1/crdb_tasks/{task_id}"] * 2


# -- defect 6: the admin check reads the role, never probes an install endpoint -------------


@pytest.mark.parametrize(
    ("answers", "admin"),
    [
        ([answer(200, {"role": "admin"})], True),
        ([answer(200, {"role": "db_viewer"})], False),
        (
            [
                answer(404, {"error_code": "not_found", "description": "no such path"}),
                answer(200, [{"uid": 1, "email": "admin@example.com", "role": "admin"}]),
            ],
            True,
        ),
        (
            [
                answer(404, {"error_code": "not_found", "description": "no such path"}),
                answer(403, {"error_code": "insufficient_permissions", "description": "no"}),
            ],
            False,
        ),
    ],
)
def test_defect6_admin_check(answers: list[requests.Response], admin: bool) -> None:
    client, session = client_with(*answers)
    assert client.can_install() is admin
    assert all(method == "GET" for method, _, _ in session.sent)
    assert session.sent[0][1] == "/v1/users/role"


# -- defect 7: internode chains keep their root --------------------------------------------


def test_defect7_internode_upload_keeps_the_root() -> None:
    root = make_ca("Root CA")
    leaf, key = root.leaf("ccs.example.com")
    issued = IssuedCertificate.from_vault({"certificate": leaf, "ca_chain": []}, private_key=key)
    assert issued.chain_pem.count("BEGIN CERTIFICATE") == 1  # ordinary items leave it out
    upload = CertUpload.with_root("ccs_internode_encryption", issued, [root.pem])
    blocks = upload.certificate.count("BEGIN CERTIFICATE")
    assert blocks == 2
    assert root.pem.strip() in upload.certificate


# -- defect 12 is in test_config.py; defect 8 below drives the executor ---------------------


def test_defect8_internode_read_back_waits_and_reports_unconfirmed() -> None:
    from vault_bridge.rotation.executor import Rotator
    from vault_bridge.rotation.installing import INTERNODE_POLL

    root = make_ca("Root CA")
    leaf, key = root.leaf("ccs.example.com")
    issued = IssuedCertificate.from_vault({"certificate": leaf, "ca_chain": []}, private_key=key)
    down = ClusterError("cannot reach the cluster: refused", cluster="east", retryable=True)

    class Unreachable:
        name = "east"
        calls = 0

        def certificates(self) -> dict[str, Any]:
            self.calls += 1
            raise down

    from vault_bridge.rotation.results import Change

    slept: list[float] = []
    rotator = Rotator.__new__(Rotator)
    rotator._sleep = slept.append
    rotator._notes = {}
    client = Unreachable()
    change = Change("east", "ccs_internode_encryption", issued, None)
    rotator._verify_internode(
        settings(internode_confirm_timeout=60.0),
        client,  # type: ignore[arg-type]
        change,
    )
    assert sum(slept) == pytest.approx(60.0)
    assert client.calls == int(60.0 / INTERNODE_POLL) + 1
    state, why = rotator._notes[("east", "ccs_internode_encryption")]
    assert state == "unconfirmed" and "did not answer for 60s" in why


def test_issued_info_is_still_readable() -> None:
    """A guard for the fixtures above: the leaf they make is valid now."""
    leaf, _ = make_ca().leaf("x.example.com")
    assert CertificateInfo.from_pem(leaf).not_after > datetime.now(UTC)
