"""The simulated cluster's databases, CRDBs and tasks follow the REST contract (over loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from vault_bridge_lab.simulator import DatabaseWorld, SimulatedCluster
from vault_bridge_lab.simulator.schemas import REPLICA_SOURCE_WRITABLE

from tests.conftest import OfflineCA, make_ca

ADMIN = ("admin@example.com", "admin-password")


class FakeClock:
    """The world's clock, moved by the tests (no sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(clock: FakeClock) -> DatabaseWorld:
    return DatabaseWorld(queued_time=0.05, run_time=0.1, resync_time=0.05, clock=clock)


@pytest.fixture
def pair(world: DatabaseWorld) -> Iterator[tuple[SimulatedCluster, SimulatedCluster]]:
    with (
        SimulatedCluster("east", world=world) as east,
        SimulatedCluster("west", world=world) as west,
    ):
        yield east, west


def call(
    sim: SimulatedCluster, tmp_path: Path, method: str, path: str, body: Any = None
) -> requests.Response:
    ca = tmp_path / f"{sim.name}-ca.pem"
    ca.write_text(sim.api_ca_pem())
    with requests.Session() as session:
        session.trust_env = False
        return session.request(
            method, f"{sim.api_url}{path}", json=body, auth=ADMIN, verify=str(ca), timeout=10
        )


def test_a_crdb_spans_both_clusters_and_its_task_moves_on(
    pair: tuple[SimulatedCluster, SimulatedCluster], clock: FakeClock, tmp_path: Path
) -> None:
    east, west = pair
    guid = east.add_crdb("aa", participants=[east, west])
    for sim in (east, west):
        [listed] = call(sim, tmp_path, "GET", "/v1/crdbs").json()
        assert listed["guid"] == guid
        assert [i["cluster"]["name"] for i in listed["instances"]] == ["east", "west"]
        [local] = listed["local_databases"]
        [bdb] = call(sim, tmp_path, "GET", "/v1/bdbs").json()
        assert (bdb["crdt"], bdb["crdt_guid"], str(bdb["uid"])) == (True, guid, local["bdb_uid"])
    task = call(west, tmp_path, "POST", f"/v1/crdbs/{guid}/updates", {"force_update": True}).json()
    assert task["status"] == "queued" and task["crdb_guid"] == guid
    seen = []
    for step in (0.0, 0.04, 0.02, 0.05, 0.05):  # queued 50 ms, then started 100 ms
        clock.advance(step)
        seen.append(call(east, tmp_path, "GET", f"/v1/crdb_tasks/{task['id']}").json()["status"])
    assert seen == ["queued", "queued", "started", "started", "finished"]
    assert [t["id"] for t in call(east, tmp_path, "GET", "/v1/crdb_tasks").json()] == [task["id"]]
    assert call(east, tmp_path, "POST", "/v1/crdbs/nope/updates", {}).status_code == 404
    assert call(east, tmp_path, "GET", "/v1/crdb_tasks/nope").status_code == 404


def test_failed_task_lists_its_errors(
    pair: tuple[SimulatedCluster, SimulatedCluster],
    world: DatabaseWorld,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    east, _ = pair
    guid = east.add_crdb("aa")
    world.fail_tasks(guid, error_code="boom", description="it broke")
    task = call(east, tmp_path, "POST", f"/v1/crdbs/{guid}/updates", {"force_update": True}).json()
    clock.advance(0.2)
    done = call(east, tmp_path, "GET", f"/v1/crdb_tasks/{task['id']}").json()
    assert done["status"] == "failed"
    assert done["errors"] == [
        {"cluster_name": "east", "error_code": "boom", "description": "it broke"}
    ]


def test_install_breaks_sync_until_the_update_finished(
    pair: tuple[SimulatedCluster, SimulatedCluster],
    world: DatabaseWorld,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    east, west = pair
    guid = east.add_crdb("aa", participants=[east, west])
    cert, key = make_ca().leaf("proxy.east")
    body = {"certificates": [{"name": "proxy", "certificate": cert, "key": key}]}
    assert call(east, tmp_path, "PUT", "/v1/cluster/certificates", body).status_code == 200
    [outage] = world.outages()
    assert (outage.kind, outage.key, outage.start, outage.end) == ("crdb", guid, clock.now, None)
    assert "east" in outage.reason
    # A plain update (no force) while certificates differ fails, as the docs warn.
    plain = call(east, tmp_path, "POST", f"/v1/crdbs/{guid}/updates", {}).json()
    clock.advance(1.0)
    assert call(east, tmp_path, "GET", f"/v1/crdb_tasks/{plain['id']}").json()["status"] == "failed"
    assert not world.crdb_in_sync(guid)
    call(east, tmp_path, "POST", f"/v1/crdbs/{guid}/updates", {"force_update": True})
    clock.advance(0.12)
    assert not world.crdb_in_sync(guid)  # queued 50 ms + started 100 ms: not yet
    clock.advance(0.1)
    [outage] = world.outages()
    # Ended when the forced task finished: 1 s + 150 ms after the install.
    assert outage.length == pytest.approx(1.15)
    assert world.crdb_in_sync(guid)


@pytest.fixture(scope="module")
def ca() -> OfflineCA:
    return make_ca("Replica CA")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"authentication_ssl_client_certs": [{"client_cert": "junk"}]},
            406,
            "invalid_certificate",
        ),
        (
            {"replica_sources": [{"uid": 1, "uri": "redis://x:1", "server_cert": "junk"}]},
            406,
            "invalid_certificate",
        ),
        ("expired", 406, "certificate_expired"),
        ("duplicate", 406, "duplicated_certs"),
        ({"replica_sources": "nope"}, 400, "invalid_schema"),
        ({"uid": 7}, 400, "invalid_schema"),  # read-only
        ({"no_such_field": 1}, 400, "invalid_schema"),
        (
            {"replica_sources": [{"uid": 1, "uri": "redis://x:1", "rdb_size": 0}]},
            400,
            "invalid_schema",
        ),
    ],
)
def test_put_bdb_validation(
    pair: tuple[SimulatedCluster, SimulatedCluster],
    tmp_path: Path,
    ca: OfflineCA,
    body: Any,
    status: int,
    code: str,
) -> None:
    east, _ = pair
    uid = east.add_bdb("db")
    if body == "expired":
        old, _ = ca.leaf(
            "old", not_before=datetime.now(UTC) - timedelta(days=9), lifetime=timedelta(days=1)
        )
        body = {"authentication_ssl_client_certs": [{"client_cert": old}]}
    elif body == "duplicate":
        cert, _ = ca.leaf("twice")
        body = {"authentication_ssl_client_certs": [{"client_cert": cert}] * 2}
    answer = call(east, tmp_path, "PUT", f"/v1/bdbs/{uid}", body)
    assert (answer.status_code, answer.json()["error_code"]) == (status, code)
    assert set(answer.json()) == {"error_code", "message"}  # requests/bdbs/_index.md
    assert call(east, tmp_path, "PUT", "/v1/bdbs/99", {"name": "x"}).status_code == 404


def test_replica_link_health_and_status(
    pair: tuple[SimulatedCluster, SimulatedCluster],
    world: DatabaseWorld,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    east, west = pair
    source = east.add_bdb("orders")
    replica = west.add_bdb("orders-replica", replica_of=[(east, source)], source_fields={"lag": 5})
    [entry] = west.bdb(replica)["replica_sources"]
    assert entry["status"] == "in-sync"
    assert [c["client_cert"] for c in east.bdb(source)["authentication_ssl_client_certs"]] == [
        west.installed_pem("syncer")
    ]
    cert, key = make_ca().leaf("proxy.east")
    body = {"certificates": [{"name": "proxy", "certificate": cert, "key": key}]}
    call(east, tmp_path, "PUT", "/v1/cluster/certificates", body)
    clock.advance(0.3)
    [entry] = west.bdb(replica)["replica_sources"]
    assert entry["status"] == "out-of-sync" and "server_cert" in entry["last_error"]
    assert {"last_update", "rdb_size", "rdb_transferred"} <= set(entry)
    entry["server_cert"] = cert
    echoed = call(west, tmp_path, "PUT", f"/v1/bdbs/{replica}", {"replica_sources": [entry]})
    assert (echoed.status_code, echoed.json()["error_code"]) == (400, "invalid_schema")
    writable = {k: v for k, v in entry.items() if k in REPLICA_SOURCE_WRITABLE}
    fixed = call(west, tmp_path, "PUT", f"/v1/bdbs/{replica}", {"replica_sources": [writable]})
    assert fixed.status_code == 200
    assert fixed.json()["replica_sources"][0]["status"] == "syncing"
    clock.advance(0.06)  # resync_time
    assert west.bdb(replica)["replica_sources"][0]["status"] == "in-sync"
    [outage] = world.outages("replica")
    assert outage.length == pytest.approx(0.3)


def test_x_task_id_names_the_task_and_a_repeat_starts_nothing(
    pair: tuple[SimulatedCluster, SimulatedCluster], world: DatabaseWorld, tmp_path: Path
) -> None:
    east, west = pair
    guid = east.add_crdb("cache", participants=[east, west])
    ca = tmp_path / "east-ca.pem"
    ca.write_text(east.api_ca_pem())
    with requests.Session() as session:
        session.trust_env = False

        def post(body: Any) -> requests.Response:
            return session.post(
                f"{east.api_url}/v1/crdbs/{guid}/updates",
                json=body,
                auth=ADMIN,
                verify=str(ca),
                headers={"X-Task-ID": "task-of-ours"},
                timeout=10,
            )

        first, again = post({"force_update": True}), post({"force_update": True})
        refused = session.post(
            f"{east.api_url}/v1/crdbs/{guid}/updates",
            json={"force_update": True, "no_such": 1},
            auth=ADMIN,
            verify=str(ca),
            timeout=10,
        )
    assert first.json()["id"] == again.json()["id"] == "task-of-ours"
    assert [t["id"] for t in world.tasks(guid)] == ["task-of-ours"]
    assert world.update_requests == 1
    assert (refused.status_code, refused.json()["error_code"]) == (400, "invalid_schema")
    assert "message" in refused.json()


@pytest.mark.parametrize(("version", "status"), [("7.22.2-14", 200), ("7.8.4-18", 404)])
def test_users_role_from_7_22_2(tmp_path: Path, version: str, status: int) -> None:
    with SimulatedCluster("old", software_version=version) as sim:
        answer = call(sim, tmp_path, "GET", "/v1/users/role")
        users = call(sim, tmp_path, "GET", "/v1/users")
    assert answer.status_code == status
    if status == 200:
        assert answer.json() == {"role": "admin"}
    assert {"email": "admin@example.com", "role": "admin"}.items() <= users.json()[0].items()


def test_partial_install_applies_then_answers_409(tmp_path: Path) -> None:
    with SimulatedCluster("east") as sim:
        cert, key = make_ca().leaf("proxy.east")
        sim.partial_installs(1)
        body = {"certificates": [{"name": "proxy", "certificate": cert, "key": key}]}
        first = call(sim, tmp_path, "PUT", "/v1/cluster/certificates", body)
        assert first.status_code == 409
        assert sim.installed_pem("proxy").strip() == cert.strip()  # applied all the same
        cert2, key2 = make_ca().leaf("proxy.east")
        body = {"certificates": [{"name": "proxy", "certificate": cert2, "key": key2}]}
        assert call(sim, tmp_path, "PUT", "/v1/cluster/certificates", body).status_code == 200


def test_crdb_instance_config_survives_updates_a_local_put_does_not(
    pair: tuple[SimulatedCluster, SimulatedCluster],
    world: DatabaseWorld,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    east, west = pair
    guid = east.add_crdb("cache", participants=[east, west])
    uid = world._crdbs[guid].db_uids["east"]
    local, _ = make_ca().leaf("local")
    through_crdb, _ = make_ca().leaf("through-crdb")
    update = {
        "force_update": True,
        "crdb": {
            "instances": [
                {
                    "id": 1,
                    "db_config": {
                        "authentication_ssl_client_certs": [{"client_cert": through_crdb}]
                    },
                }
            ]
        },
    }
    assert call(east, tmp_path, "POST", f"/v1/crdbs/{guid}/updates", update).status_code == 200
    clock.advance(1.0)
    body = {"authentication_ssl_client_certs": [{"client_cert": local}]}
    assert call(east, tmp_path, "PUT", f"/v1/bdbs/{uid}", body).status_code == 200
    certs = [c["client_cert"] for c in east.bdb(uid)["authentication_ssl_client_certs"]]
    assert certs == [local]
    assert call(east, tmp_path, "POST", f"/v1/crdbs/{guid}/updates", {"force_update": True}).ok
    clock.advance(1.0)
    certs = [c["client_cert"] for c in east.bdb(uid)["authentication_ssl_client_certs"]]
    assert certs == [through_crdb]  # the local PUT was undone by the CRDB's configuration push


def test_crdb_instance_certificate_in_db_config(
    pair: tuple[SimulatedCluster, SimulatedCluster],
    world: DatabaseWorld,
    tmp_path: Path,
) -> None:
    east, west = pair
    guid = east.add_crdb("cache", participants=[east, west])
    uid = world._crdbs[guid].db_uids["east"]
    ca = make_ca()
    cert, key = ca.leaf("cache.east.example.com")
    _, other_key = ca.leaf("other")

    def update(db_config: dict[str, Any]) -> requests.Response:
        body = {"force_update": True, "crdb": {"instances": [{"id": 1, "db_config": db_config}]}}
        return call(east, tmp_path, "POST", f"/v1/crdbs/{guid}/updates", body)

    for refused in ({"cert": cert}, {"private_key": key}, {"cert": cert, "private_key": other_key}):
        answer = update(refused)
        assert answer.status_code == 400, refused.keys()
        assert east.db_certs.get(uid) is None
    assert update({"cert": cert, "private_key": key}).status_code == 200
    installed = east.db_certs.get(uid)
    assert installed is not None and installed.chain_pem.startswith(cert.strip())
    assert "PRIVATE KEY" not in str(east.bdb(uid)) + str(world.crdb_json("east", guid))
    assert west.db_certs.get(world._crdbs[guid].db_uids["west"]) is None
