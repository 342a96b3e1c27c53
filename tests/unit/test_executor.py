"""The executor (:class:`Rotator`) through its ports: fake Vault, fake clusters, fake TLS probe,
fake clock. Bulk and update_cert installs, the fallback, the retries of the REST client, a bad
item isolated, the read-back and the served leaf checked. No server, no real sleep."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.fakes.transport import http_client
from tests.fakes.world import MOUNT, World, make_settings
from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.config.settings import CertSpec
from vault_bridge.errors import DeferredError, VaultError, VaultUnavailableError
from vault_bridge.models.certificates import CertificateInfo, IssuedCertificate
from vault_bridge.rotation.installing import INSTALL_ATTEMPTS
from vault_bridge.rotation.results import Change, PassResult

BULK = "PUT /v1/cluster/certificates"
ONE = "PUT /v1/cluster/update_cert"


def world(
    tmp_path: Path,
    certificates: Sequence[str] = ("cm", "proxy"),
    clusters: Sequence[str] = ("east",),
) -> World:
    return World(make_settings(tmp_path / "state", clusters, certificates))


def results(result: PassResult) -> dict[str, str]:
    return {f"{o.name}@{o.cluster}": o.result for o in result.outcomes}


def served_serial(w: World, cluster: str, name: str) -> str:
    return CertificateInfo.from_pem(w.clusters[cluster].installed[name]).serial


def test_bulk_install_of_every_due_certificate_in_one_request(tmp_path: Path) -> None:
    w = world(tmp_path, ("cm", "proxy", "api"))
    w.install_foreign("east", "cm")  # proxy and api missing
    result = w.rotator().run_once()
    assert results(result) == {
        "cm@east": "installed",
        "proxy@east": "installed",
        "api@east": "installed",
    }
    east = w.requests("east")
    assert east.count(BULK) == 1 and ONE not in east
    for outcome in result.outcomes:
        assert served_serial(w, "east", outcome.name) == outcome.serial
    # cm (8443) and api (the REST port) are served on known ports and checked; proxy is not
    assert sorted(w.probe.probes) == ["east.example.com:8443", "east.example.com:9443"]
    assert result.ok and result.summary() == "3 installed"


def test_update_cert_one_by_one_before_7_22_2(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.clusters["east"].version = "7.8.4-18"
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "installed", "proxy@east": "installed"}
    east = w.requests("east")
    assert east.count(ONE) == 2 and BULK not in east


def test_internode_certificates_go_in_a_bulk_request_of_their_own(tmp_path: Path) -> None:
    spec_keys = {"key_type": "rsa", "key_bits": 2048}
    w = World(
        make_settings(
            tmp_path / "state",
            certificates=("cm",),
            cluster_keys={
                "east": {
                    "certificates": {
                        "cm": {"role": "redis", "common_name": "cm.east.example.com"},
                        "ccs_internode_encryption": {
                            "role": "redis",
                            "common_name": "node.east.example.com",
                            **spec_keys,
                        },
                    }
                }
            },
        )
    )
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "installed", "ccs_internode_encryption@east": "installed"}
    assert w.requests("east").count(BULK) == 2  # the fake refuses a mixed request


@pytest.mark.parametrize("status", [404, 405])
def test_no_bulk_endpoint_falls_back_to_update_cert_and_remembers(
    tmp_path: Path, status: int
) -> None:
    w = world(tmp_path)
    east = w.clusters["east"]
    east.fail[BULK] = [east.error(status, "not here")]
    rotator = w.rotator()
    assert results(rotator.run_once()) == {"cm@east": "installed", "proxy@east": "installed"}
    assert w.requests("east").count(BULK) == 1 and w.requests("east").count(ONE) == 2
    w.events.clear()
    rotator.run_once(force=[("east", "cm")])
    assert BULK not in w.requests("east") and w.requests("east").count(ONE) == 1


@pytest.mark.parametrize("status", [400, 403, 406])
def test_a_bad_item_in_a_rejected_bulk_request_fails_alone(tmp_path: Path, status: int) -> None:
    w = world(tmp_path, ("cm", "proxy", "metrics_exporter"))
    east = w.clusters["east"]
    east.fail[BULK] = [east.error(status, "rejected")]
    east.reject = {"proxy"}
    result = w.rotator().run_once()
    assert results(result) == {
        "cm@east": "installed",
        "metrics_exporter@east": "installed",
        "proxy@east": "failed",
    }
    failed = result.failed[0]
    assert failed.name == "proxy" and "rejected the certificate as invalid" in (failed.error or "")
    assert "proxy" not in east.installed
    assert w.requests("east").count(BULK) == 4  # the whole request, then one per item
    assert result.summary().startswith("2 installed; 1 of 3 certificates failed: proxy on east")


def test_a_bulk_failure_of_another_kind_fails_every_item_without_resending(
    tmp_path: Path,
) -> None:
    w = world(tmp_path)
    east = w.clusters["east"]
    east.fail[BULK] = [east.error(401, "authentication failed: wrong username or password")]
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "failed", "proxy@east": "failed"}
    assert w.requests("east").count(BULK) == 1 and ONE not in w.requests("east")
    assert east.installed == {}


def test_a_5xx_is_read_back_before_the_install_is_sent_again(tmp_path: Path) -> None:
    w = world(tmp_path)
    east = w.clusters["east"]
    east.fail[BULK] = [east.error(500, "internal error on the cluster")]
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "installed", "proxy@east": "installed"}
    sent = w.requests("east")
    first = sent.index(BULK)
    assert sent[first + 1 : first + 3] == ["GET /v1/cluster/certificates", BULK]


def rest_world(tmp_path: Path) -> tuple[World, ClusterClient]:
    """The real REST client of the cluster, over an in-memory transport to the fake."""
    w = world(tmp_path)
    client = ClusterClient(
        w.settings.cluster("east"), sleep=w.clock.sleep, password=lambda: "not-a-secret"
    )
    return w, client


@pytest.mark.parametrize("failure", [409, 500, 503, "connection"])
def test_the_install_is_retried_on_409_500_503_and_connection_errors(
    tmp_path: Path, failure: int | str
) -> None:
    w, client = rest_world(tmp_path)
    with client:
        _, transport = http_client(w.clusters["east"], client)
        transport.failures[BULK] = [failure, failure]
        rotator = w.rotator()
        rotator.clusters = {"east": client}
        result = rotator.run_once()
    assert results(result) == {"cm@east": "installed", "proxy@east": "installed"}
    assert transport.sent.count(BULK) == 3
    assert w.clock.slept[:2] == [0.5, 1.0]  # the client's backoff, on the injected sleep


def test_retries_end_and_the_certificates_fail(tmp_path: Path) -> None:
    w, client = rest_world(tmp_path)
    with client:
        _, transport = http_client(w.clusters["east"], client)
        transport.failures[BULK] = [503] * INSTALL_ATTEMPTS
        rotator = w.rotator()
        rotator.clusters = {"east": client}
        result = rotator.run_once()
    assert results(result) == {"cm@east": "failed", "proxy@east": "failed"}
    assert "the node is not answering" in (result.failed[0].error or "")
    # sent at most INSTALL_ATTEMPTS times, each after a read-back that found nothing in place
    assert transport.sent.count(BULK) == INSTALL_ATTEMPTS and ONE not in transport.sent
    assert w.clock.slept == [0.5, 1.0, 2.0]
    assert w.clusters["east"].installed == {}


def test_a_400_is_not_retried_and_isolates_the_bad_item(tmp_path: Path) -> None:
    w, client = rest_world(tmp_path)
    w.clusters["east"].reject = {"cm"}
    with client:
        _, transport = http_client(w.clusters["east"], client)
        rotator = w.rotator()
        rotator.clusters = {"east": client}
        result = rotator.run_once()
    assert results(result) == {"cm@east": "failed", "proxy@east": "installed"}
    assert transport.sent.count(BULK) == 3 and w.clock.slept == []


def test_a_read_back_that_differs_fails_the_certificate(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.clusters["east"].ignore_installs = True  # answers 200, keeps the old certificates
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "failed", "proxy@east": "failed"}
    assert "reports a different certificate after the install" in (result.failed[0].error or "")


def test_the_served_leaf_is_awaited_then_accepted(tmp_path: Path) -> None:
    w = world(tmp_path, ("cm",))
    w.install_ours("east", "cm", lifetime=timedelta(days=3))
    w.clock.advance(timedelta(days=1))  # past 2/3 of its lifetime: due
    w.clusters["east"].serve_lag = 2  # the listener reloads a little later
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "installed"}
    assert w.clock.slept == [0.2, 0.4]


def test_a_listener_that_keeps_the_old_leaf_fails_the_certificate(tmp_path: Path) -> None:
    w = world(tmp_path, ("cm",))
    w.install_foreign("east", "cm")
    w.clusters["east"].serve_lag = 100
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "failed"}
    error = result.failed[0].error or ""
    assert "east.example.com:8443 serves serial" in error and "not the new certificate" in error
    assert w.clock.slept == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_nothing_to_do_for_a_valid_certificate_of_ours_unless_forced(tmp_path: Path) -> None:
    w = world(tmp_path, ("cm",))
    old = w.install_ours("east", "cm")
    rotator = w.rotator()
    result = rotator.run_once()
    assert result.outcomes == [] and [s.state for s in result.statuses] == ["ok"]
    assert "sign" not in w.vault.calls and BULK not in w.requests("east")
    forced = rotator.run_once(force=[("east", "cm")])
    assert results(forced) == {"cm@east": "installed"}
    assert w.clusters["east"].installed["cm"] != old


@pytest.mark.parametrize(
    ("lifetime", "usages", "message"),
    [
        (timedelta(hours=1), None, "less than 10% of the requested TTL"),
        (None, (ExtendedKeyUsageOID.SERVER_AUTH,), "lacks the clientAuth extended key usage"),
    ],
)
def test_a_certificate_unfit_to_install_is_never_sent(
    tmp_path: Path,
    lifetime: timedelta | None,
    usages: tuple[object, ...] | None,
    message: str,
) -> None:
    w = world(tmp_path, ("cm",))
    w.vault.lifetime = lifetime
    if usages is not None:
        w.vault.usages = usages  # type: ignore[assignment]
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "failed"}
    assert message in (result.failed[0].error or "")
    assert BULK not in w.requests("east") and w.clusters["east"].installed == {}


def test_a_vault_failure_fails_one_certificate_and_the_others_go_on(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.vault.fail["sign"] = [VaultUnavailableError("Vault is unavailable: sealed")]
    result = w.rotator().run_once()
    # whichever certificate's request came first (they are obtained at the same time)
    assert sorted(results(result).values()) == ["failed", "installed"]
    assert "sealed" in (result.failed[0].error or "")


def test_issue_mode_takes_the_key_from_vault(tmp_path: Path) -> None:
    w = World(
        make_settings(
            tmp_path / "state",
            cluster_keys={
                "east": {
                    "certificates": {
                        "cm": {
                            "role": "redis",
                            "common_name": "cm.east.example.com",
                            "mode": "issue",
                        }
                    }
                }
            },
        )
    )
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "installed"}
    assert "issue" in w.vault.calls and "sign" not in w.vault.calls


def test_a_cluster_that_cannot_be_read_is_reported_apart(tmp_path: Path) -> None:
    w = world(tmp_path, ("cm",), ("east", "west"))
    east = w.clusters["east"]
    east.fail["GET /v1/cluster/certificates"] = [east.error(503, "down")]
    result = w.rotator().run_once()
    assert "east" in result.cluster_errors and results(result) == {"cm@west": "installed"}
    assert not result.ok and "cluster east failed" in result.summary()


def test_a_cluster_failing_after_the_plan_fails_its_certificates_only(tmp_path: Path) -> None:
    w = world(tmp_path, ("cm",), ("east", "west"))
    east = w.clusters["east"]
    east.fail["GET /v1/nodes"] = [east.error(503, "the node is not answering")]
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "failed", "cm@west": "installed"}


def test_a_cluster_failing_after_the_plan_fails_alone(tmp_path: Path) -> None:
    # One read per cluster serves the plan and the install: the next read is the one that
    # verifies the install, and a cluster that stops answering there fails on its own.
    w = world(tmp_path, ("cm",), ("east", "west"))
    east = w.clusters["east"]
    east.fail["GET /v1/cluster/certificates"] = [None, east.error(503, "down")]
    result = w.rotator().run_once()
    assert results(result) == {"cm@east": "failed", "cm@west": "installed"}
    assert "down" in (result.failed[0].error or "")
    assert east.events.count("east: GET /v1/cluster/certificates") == 2
    assert w.vault.calls.count("sign") == 2


def test_a_deferred_certificate_fails_this_pass_only(tmp_path: Path) -> None:
    class Deferring(RecordingHooks):
        def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
            raise DeferredError("stopping: no new certificate is requested")

    w = world(tmp_path, ("cm",))
    result = w.rotator(hooks=Deferring(w.events)).run_once()
    assert results(result) == {"cm@east": "failed"}
    assert "stopping" in (result.failed[0].error or "") and "sign" not in w.vault.calls


def test_the_api_certificate_makes_the_client_trust_the_vault_chain(tmp_path: Path) -> None:
    w = world(tmp_path, ("api",))
    w.rotator().status()
    assert w.clusters["east"].trusted == [w.vault.ca(MOUNT).pem]


class RecordingHooks:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
        self.events.append(f"hook before_issue {spec.name.value}")

    def issued(self, spec: CertSpec, issued: IssuedCertificate) -> None:
        self.events.append(f"hook issued {spec.name.value}")

    def before_install(self, cluster: str, changes: Sequence[Change]) -> None:
        self.events.append(f"hook before_install {','.join(c.name for c in changes)}")

    def installed(self, changes: Sequence[Change]) -> None:
        self.events.append(f"hook installed {','.join(c.name for c in changes)}")

    def completed(self, changes: Sequence[Change]) -> None:
        self.events.append(f"hook completed {','.join(c.name for c in changes)}")


def test_the_hooks_frame_every_step(tmp_path: Path) -> None:
    w = world(tmp_path, ("cm",))
    w.rotator(hooks=RecordingHooks(w.events)).run_once()
    steps = [e for e in w.events if e.startswith("hook") or BULK in e]
    assert steps == [
        "hook before_issue cm",
        "hook issued cm",
        "hook before_install cm",
        f"east: {BULK}",
        "hook installed cm",
        "hook completed cm",
    ]


def test_a_hook_raising_before_the_issue_skips_the_certificate(tmp_path: Path) -> None:
    class Refusing(RecordingHooks):
        def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
            if spec.name.value == "cm":
                raise VaultError("runaway guard")

    w = world(tmp_path)
    result = w.rotator(hooks=Refusing(w.events)).run_once()
    assert results(result) == {"cm@east": "failed", "proxy@east": "installed"}
    assert w.vault.calls.count("sign") == 1
