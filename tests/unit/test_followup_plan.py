"""The follow-up decisions (vault_bridge.decisions.followup_plan) and crdb-cli's output, offline."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import OfflineCA, make_ca
from vault_bridge.adapters.crdb_runners import _cli_result, parse_crdb_cli_output
from vault_bridge.decisions.followup_plan import (
    ClusterView,
    WaitingOn,
    crdb_guids,
    plan_crdb_updates,
    plan_followups,
)
from vault_bridge.errors import FollowUpError
from vault_bridge.models.certificates import CertChange
from vault_bridge.models.cluster import Bdb, Crdb


@pytest.fixture(scope="module")
def ca() -> OfflineCA:
    return make_ca("Plan CA")


def crdb(guid: str, *, local: bool = True) -> Crdb:
    data: dict[str, Any] = {
        "guid": guid,
        "name": f"db-{guid}",
        "instances": [{"id": 1, "cluster": {"name": "x", "url": "https://x"}, "db_uid": "1"}],
        "local_databases": [{"bdb_uid": "1", "id": 1}] if local else [],
    }
    return Crdb.from_json(data)


def bdb(uid: int, **fields: Any) -> Bdb:
    return Bdb.from_json({"uid": uid, "name": f"db{uid}", **fields})


@pytest.mark.parametrize(
    ("crdbs", "bdbs", "guids", "warnings"),
    [
        ([crdb("a")], [bdb(1, crdt=True, crdt_guid="a")], {"a"}, 0),
        ([crdb("a", local=False)], [], set(), 0),  # no instance here
        ([crdb("a")], [], {"a"}, 1),  # listed, no bdb says so: updated, with a warning
        ([], [bdb(1, crdt=True, crdt_guid="b")], {"b"}, 1),  # the other way round
    ],
)
def test_crdbs_are_the_union_of_both_sources(
    crdbs: list[Crdb], bdbs: list[Bdb], guids: set[str], warnings: int
) -> None:
    found, notes = crdb_guids(ClusterView("east", tuple(crdbs), tuple(bdbs)))
    assert set(found) == guids
    assert len(notes) == warnings


def test_one_update_per_crdb_through_the_first_cluster_with_a_runner() -> None:
    views = {
        "east": ClusterView("east", (crdb("a"), crdb("b"))),
        "west": ClusterView("west", (crdb("a"), crdb("c"))),
    }
    steps, warnings = plan_crdb_updates(["east", "west"], views, {"east": "none", "west": "rest"})
    assert {(s.guid, s.via, s.clusters) for s in steps} == {
        ("a", "west", ("east", "west")),
        ("c", "west", ("west",)),
    }
    [warning] = [w for w in warnings if "crdb_update = none" in w]  # b: on east only
    assert "crdb-cli crdb update --crdb-guid b --force" in warning


def test_replica_server_cert_replaced_every_other_field_kept(ca: OfflineCA) -> None:
    old, _ = ca.leaf("proxy-old")
    new, _ = ca.leaf("proxy-new")
    other, _ = ca.leaf("elsewhere")
    entry = {
        "uid": 1,
        "uri": "redis://admin:secret@east:12000",
        "server_cert": old,
        "compression": 3,
        "status": "in-sync",  # read-only: never sent back
        "lag": 0,
    }
    untouched = {"uid": 2, "uri": "redis://admin:x@far:1", "server_cert": other}
    views = {
        "east": ClusterView("east", proxy_pem=old),
        "west": ClusterView("west", bdbs=(bdb(7, replica_sources=[entry, untouched]),)),
    }
    plan = plan_followups([CertChange("east", "proxy", new, old)], views, {})
    [update] = plan.server_cert_updates
    assert (update.cluster, update.uid, update.causes) == ("west", 7, (("east", "proxy"),))
    first, second = update.replica_sources
    assert first == {
        "uid": 1,
        "uri": "redis://admin:secret@east:12000",
        "server_cert": new,
        "compression": 3,
    }
    assert second == untouched
    assert "secret" not in repr(update)  # the URI's password stays out of reprs and logs
    # Made again after the update (a replay): nothing left to do.
    entry["server_cert"] = new
    views["west"] = ClusterView("west", bdbs=(bdb(7, replica_sources=[entry, untouched]),))
    again = plan_followups([CertChange("east", "proxy", new, old)], views, {})
    assert again.server_cert_updates == ()


def test_syncer_change_adds_to_sources_and_knows_the_replicas(ca: OfflineCA) -> None:
    old, _ = ca.leaf("syncer-old")
    new, _ = ca.leaf("syncer-new")
    proxy, _ = ca.leaf("east-proxy")
    source = bdb(1, authentication_ssl_client_certs=[{"client_cert": old}])
    replica = bdb(5, replica_sources=[{"uid": 1, "uri": "redis://e:1", "server_cert": proxy}])
    views = {
        "east": ClusterView("east", bdbs=(source,), proxy_pem=proxy),
        "west": ClusterView("west", bdbs=(replica,), syncer_pem=old),
    }
    plan = plan_followups([CertChange("west", "syncer", new, old)], views, {})
    [update] = plan.client_cert_updates
    assert (update.cluster, update.uid, update.add, update.cause) == (
        "east",
        1,
        True,
        ("west", "syncer"),
    )
    assert [(r.cluster, r.uid) for r in update.replicas] == [("west", 5)]
    assert plan.warnings == ()


def test_unreadable_cluster_keeps_the_change_pending() -> None:
    views = {"east": ClusterView("east"), "west": ClusterView("west", error="HTTP 503")}
    plan = plan_followups([CertChange("east", "proxy", "new", None)], views, {})
    error = plan.errors[("east", "proxy")]
    assert "west (HTTP 503)" in error
    assert isinstance(error, WaitingOn) and error.clusters == ("west",)  # west's failure


@pytest.mark.parametrize(
    ("output", "code", "error"),
    [
        (
            "Task 1a2b created\n  ---> Status changed: queued -> started\n"
            "  ---> Status changed: started -> finished\n",
            0,
            None,
        ),
        (
            "Task 1a2b created\n  ---> Status changed: queued -> started\n"
            "  ---> Status changed: started -> failed\n  ---> Error: east: x: boom\n",
            1,
            "exited 1",
        ),
        ("Task 1a2b created\n  ---> Status changed: queued -> failed\n", 0, "failed"),
        ("Task 1a2b created\n", 0, "without a finished task"),
        ("Error: POST /v1/crdbs/x/updates: HTTP 404\n", 2, "exited 2"),
    ],
)
def test_crdb_cli_output(output: str, code: int, error: str | None) -> None:
    if error is None:
        result = _cli_result("g", ["crdb-cli"], code, output)
        assert (result.task_id, result.status) == ("1a2b", "finished")
        assert parse_crdb_cli_output(output).statuses == ("queued", "started", "finished")
        return
    with pytest.raises(FollowUpError, match=error) as caught:
        _cli_result("g", ["crdb-cli"], code, output)
    assert output.strip().splitlines()[-1] in str(caught.value)  # the output is attached
