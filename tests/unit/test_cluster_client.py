"""The REST adapter's transport: retries with backoff, trust never taken from the environment."""

from __future__ import annotations

import socket

import pytest
from pydantic import SecretStr

from tests.conftest import OfflineCA
from vault_bridge.adapters.redis_enterprise import ClusterClient
from vault_bridge.config.settings import ClusterSettings
from vault_bridge.decisions.install import CertUpload
from vault_bridge.errors import ClusterError
from vault_bridge.models.cluster import parse_version


def settings(url: str, **kw: object) -> ClusterSettings:
    base: dict[str, object] = {
        "name": "east",
        "url": url,
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
    return ClusterSettings(**base)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_errors_are_retried_with_backoff() -> None:
    slept: list[float] = []
    with (
        ClusterClient(settings(f"https://127.0.0.1:{closed_port()}"), sleep=slept.append) as client,
        pytest.raises(ClusterError, match="cannot reach the cluster") as info,
    ):
        client.nodes()
    assert slept == [0.5, 1.0, 2.0]
    assert info.value.retryable
    assert "pw" not in str(info.value)


def test_session_ignores_environment_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent.pem")
    with ClusterClient(settings("https://127.0.0.1:1"), sleep=lambda s: None) as client:
        assert client._session.trust_env is False
        assert client.verify is True


def test_insecure_skip_verify_warns(caplog: pytest.LogCaptureFixture) -> None:
    with ClusterClient(
        settings("https://127.0.0.1:1", insecure_skip_verify=True), sleep=lambda s: None
    ) as client:
        assert client.verify is False
    assert "TLS verification of the REST API is OFF" in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7.22.2-14", (7, 22, 2, 14)),
        ("7.8.4-18", (7, 8, 4, 18)),
        ("6.2.18", (6, 2, 18)),
        ("7.22.0-beta1", (7, 22, 0, 1)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, ...]) -> None:
    assert parse_version(text) == expected


def test_one_read_serves_until_an_install_a_forget_or_a_minute(test_ca: OfflineCA) -> None:
    now = [0.0]
    calls: list[tuple[str, str]] = []
    pem, _ = test_ca.leaf("proxy.example.com")

    def request(method: str, path: str, body: object = None, **kw: object) -> object:
        calls.append((method, path))
        return {f"{n}_cert": pem for n in ("api", "cm", "proxy", "syncer")}

    client = ClusterClient(settings("https://127.0.0.1:1"), monotonic=lambda: now[0])
    client.request = request  # type: ignore[method-assign]
    reads = [("GET", "/v1/cluster/certificates")]
    assert client.last_certificates()["proxy"].pem == pem  # nothing read yet: one read
    assert calls == reads
    client.certificates()
    assert client.last_certificates() and calls == reads * 2  # the pass's read serves
    client.put_certificates([CertUpload("proxy", pem, "k")])
    client.last_certificates()  # an install was sent: read again
    assert calls[-2:] == [("PUT", "/v1/cluster/certificates"), reads[0]]
    client.forget_certificates()
    client.last_certificates()
    assert calls.count(reads[0]) == 4
    now[0] += 60.0
    client.last_certificates()  # older than a minute: read again
    assert calls.count(reads[0]) == 5
    client.close()


def test_the_lowest_version_is_read_once_an_hour() -> None:
    now = [0.0]
    calls: list[str] = []

    def request(method: str, path: str, body: object = None, **kw: object) -> object:
        calls.append(path)
        return [
            {"uid": 1, "software_version": "7.22.2-14"},
            {"uid": 2, "software_version": "7.8.4"},
        ]

    client = ClusterClient(settings("https://127.0.0.1:1"), monotonic=lambda: now[0])
    client.request = request  # type: ignore[method-assign]
    assert client.lowest_version() == (7, 8, 4)
    now[0] += 3599.0
    assert client.lowest_version() == (7, 8, 4) and calls == ["/v1/nodes"]
    now[0] += 1.0
    client.lowest_version()
    assert calls == ["/v1/nodes", "/v1/nodes"]
    client.close()
