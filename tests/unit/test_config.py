from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from vault_bridge_lab.lab import to_toml

from vault_bridge.config.loading import load_config, parse_config
from vault_bridge.errors import ConfigError
from vault_bridge.models.certificates import CertName


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text("s3cret\n")
    return path


def doc(password_file: Path, **cluster: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "east",
        "url": "https://re-east.example.com:9443",
        "username": "admin@example.com",
        "password_file": str(password_file),
        "certificates": {"proxy": {"role": "redis-proxy", "common_name": "re-east.example.com"}},
    }
    base.update(cluster)
    return {"vault": {"address": "https://vault.example.com:8200"}, "clusters": [base]}


def test_defaults_are_applied(password_file: Path) -> None:
    settings = parse_config(doc(password_file))
    spec = settings.clusters[0].certificates[0]
    assert spec.name is CertName.PROXY
    assert (spec.pki_mount, spec.mode, spec.key_type, spec.key_bits, spec.ttl) == (
        "pki",
        "sign",
        "rsa",
        2048,
        timedelta(hours=720),
    )
    assert spec.renew_at == pytest.approx(0.667)
    password = settings.clusters[0].password
    assert password is not None and password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_durations_are_parsed_once_at_load(password_file: Path) -> None:
    data = doc(password_file)
    data["agent"] = {"resync_interval": "90s", "revoke_grace": "1h30m"}
    data["clusters"][0]["certificates"]["proxy"]["ttl"] = "7d"
    settings = parse_config(data)
    agent = settings.agent
    assert (agent.resync_interval, agent.revoke_grace, agent.stop_grace) == (
        timedelta(seconds=90),
        timedelta(hours=1, minutes=30),
        timedelta(seconds=30),  # the default
    )
    assert settings.clusters[0].certificates[0].ttl == timedelta(days=7)


def test_per_certificate_override_and_renew_before(password_file: Path) -> None:
    data = doc(password_file)
    data["defaults"] = {"key_type": "ec", "key_bits": 384, "renew_before": "240h"}
    data["clusters"][0]["certificates"]["proxy"]["ttl"] = "2160h"
    spec = parse_config(data).clusters[0].certificates[0]
    assert (spec.key_type, spec.key_bits, spec.ttl) == ("ec", 384, timedelta(hours=2160))
    assert spec.renew_at is None and spec.renew_before == timedelta(hours=240)


def test_endpoint_defaults(password_file: Path) -> None:
    cluster = parse_config(doc(password_file, verify_endpoints={"proxy": "db:12000"})).clusters[0]
    assert cluster.endpoint_for(CertName.CM) == "re-east.example.com:8443"
    assert cluster.endpoint_for(CertName.METRICS_EXPORTER) == "re-east.example.com:8070"
    assert cluster.endpoint_for(CertName.API) == "re-east.example.com:9443"
    assert cluster.endpoint_for(CertName.PROXY) == "db:12000"
    assert cluster.endpoint_for(CertName.SYNCER) is None


def _mutate(data: dict[str, Any], path: str, value: Any) -> None:
    node: Any = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if value is _DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("clusters.0.usernme", "x", "clusters[0].usernme: unknown key (did you mean 'username'?)"),
        (
            "clusters.0.certificates.prxy",
            {"role": "r", "common_name": "c"},
            "clusters[0].certificates.prxy: unknown certificate name (did you mean 'proxy'?)",
        ),
        (
            "clusters.0.certificates.proxy.role",
            _DELETE,
            "clusters[0].certificates.proxy.role: missing",
        ),
        ("clusters.0.certificates.proxy.rolee", "x", "(did you mean 'role'?)"),
        (
            "clusters.0.certificates.proxy.ttl",
            "abc",
            "clusters[0].certificates.proxy.ttl: expected a duration",
        ),
        (
            "clusters.0.certificates.proxy.renew_at",
            1.5,
            "clusters[0].certificates.proxy.renew_at: Input should be less than 1",
        ),
        (
            "clusters.0.certificates.proxy.key_bits",
            1024,
            "key_bits: expected one of 2048, 3072, 4096",
        ),
        (
            "clusters.0.certificates.proxy.key_type",
            "dsa",
            "key_type: Input should be 'rsa' or 'ec'",
        ),
        (
            "clusters.0.password_file",
            "/nonexistent/pw",
            "clusters[0].password_file: cannot read '/nonexistent/pw'",
        ),
        ("clusters.0.url", "http://re:9443", "clusters[0].url: expected an https:// URL"),
        ("clusters.0.crdb_update", "ssh", "clusters[0].crdb_update: Input should be"),
        (
            "clusters.0.verify_endpoints",
            {"cm": "nohost"},
            "verify_endpoints.cm: expected host:port",
        ),
        ("vault.adress", "x", "vault.adress: unknown key (did you mean 'address'?)"),
        (
            "vault.auth",
            {"method": "approle"},
            "vault.auth: missing key 'role_id': required for method 'approle'",
        ),
        (
            "vault.auth",
            {"method": "token", "role_id": "x"},
            "key 'role_id' does not apply to method 'token'",
        ),
        ("vault.auth", {"method": "tokn"}, "vault.auth.method: Input should be"),
        ("agent.max_issues_per_hour", 0, "agent.max_issues_per_hour"),
        ("agent.concurrency", 0, "agent.concurrency: Input should be greater than or equal to 1"),
        ("agent.concurrency", 65, "agent.concurrency: Input should be less than or equal to 64"),
        ("agent.resync_interval", "soon", "agent.resync_interval: expected a duration"),
        ("agent.stop_grace", "0s", "agent.stop_grace: expected a positive duration"),
        (
            "agent.revoke_grace",
            3600,
            "agent.revoke_grace: Input should be a valid string, got 3600",
        ),
        (
            "clusters.0.ca_fingerprint",
            "abc",
            "clusters[0].ca_fingerprint: expected a SHA-256 fingerprint",
        ),
    ],
)
def test_bad_configuration_is_one_clear_line(
    password_file: Path, path: str, value: Any, expected: str
) -> None:
    data = copy.deepcopy(doc(password_file))
    _mutate(data, path, value)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_duplicate_cluster_names(password_file: Path) -> None:
    data = doc(password_file)
    data["clusters"].append(dict(data["clusters"][0]))
    with pytest.raises(ConfigError, match=r"clusters\[1\].name: duplicate cluster name 'east'"):
        parse_config(data)


def test_internode_needs_rsa(password_file: Path) -> None:
    data = doc(password_file)
    data["defaults"] = {"key_type": "ec", "key_bits": 256}
    data["clusters"][0]["certificates"]["ccs_internode_encryption"] = {
        "role": "r",
        "common_name": "c",
    }
    with pytest.raises(ConfigError, match="ccs_internode_encryption takes RSA keys only"):
        parse_config(data)


def test_password_env(monkeypatch: pytest.MonkeyPatch, password_file: Path) -> None:
    data = doc(password_file)
    del data["clusters"][0]["password_file"]
    data["clusters"][0]["password_env"] = "RE_EAST_PASSWORD"
    monkeypatch.delenv("RE_EAST_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="environment variable 'RE_EAST_PASSWORD' is not set"):
        parse_config(data)
    monkeypatch.setenv("RE_EAST_PASSWORD", "pw")
    password = parse_config(data).clusters[0].password
    assert password is not None and password.get_secret_value() == "pw"


def test_password_from_vault_kv(password_file: Path) -> None:
    data = doc(password_file)
    del data["clusters"][0]["password_file"]
    data["clusters"][0]["password_vault"] = "secret/redis/re-east#password"
    cluster = parse_config(data).clusters[0]
    assert cluster.password is None
    assert cluster.password_vault is not None
    assert (
        cluster.password_vault.mount,
        cluster.password_vault.path,
        cluster.password_vault.key,
    ) == (
        "secret",
        "redis/re-east",
        "password",
    )
    assert cluster.password_vault.api_path == "secret/data/redis/re-east"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"password_vault": "secret/redis"}, "expected '<kv-v2 mount>/<path>#<key>'"),
        ({"password_vault": "secret#pw"}, "expected '<kv-v2 mount>/<path>#<key>'"),
        (
            {"password_env": "X"},
            "expected exactly one of 'password_file', 'password_env' or 'password_vault'",
        ),
    ],
)
def test_password_vault_errors(password_file: Path, extra: dict[str, str], expected: str) -> None:
    data = doc(password_file, **extra)
    if "password_vault" in extra:
        del data["clusters"][0]["password_file"]
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert expected in str(info.value)


def test_vault_address_from_env(monkeypatch: pytest.MonkeyPatch, password_file: Path) -> None:
    data = doc(password_file)
    del data["vault"]["address"]
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    with pytest.raises(ConfigError, match=r"vault\.address: missing"):
        parse_config(data)
    monkeypatch.setenv("VAULT_ADDR", "https://v:8200/")
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a")
    settings = parse_config(data)
    assert settings.vault.address == "https://v:8200"
    assert settings.vault.namespace == "team-a"


def test_load_config_from_file_and_env(
    tmp_path: Path, password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(to_toml(doc(password_file)))
    monkeypatch.setenv("VAULT_BRIDGE_CONFIG", str(path))
    assert load_config().clusters[0].name == "east"
    path.write_text("[vault\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "missing.toml")


def test_readme_example_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The annotated example in examples/config.toml stays valid."""
    example = Path(__file__).resolve().parents[2] / "examples" / "config.toml"
    text = example.read_text()
    monkeypatch.setenv("RE_EAST_PASSWORD", "pw")
    data = __import__("tomllib").loads(text)
    data["vault"].pop("ca_cert")  # files that exist only on a real host
    for cluster in data["clusters"]:
        cluster.pop("ca_file", None)
    settings = parse_config(data)
    assert {s.name.value for s in settings.specs()} >= {
        "cm",
        "api",
        "proxy",
        "syncer",
        "metrics_exporter",
    }


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        ("ip_sans", ["not-an-ip"], "ip_sans: Value error, [0]: expected an IP address"),
        ("ip_sans", ["10.0.0.1", "10.0.0.300"], "[1]: expected an IP address"),
        ("alt_names", ["ok.example.com", "bad name"], "[1]: expected a DNS name"),
        ("alt_names", ["-lead.example.com"], "expected a DNS name"),
        ("common_name", "dot..example.com", "expected a DNS name"),
        ("common_name", "", "expected a DNS name"),
    ],
)
def test_defect12_names_and_ips_are_checked_at_load(
    password_file: Path, where: str, value: Any, expected: str
) -> None:
    data = doc(password_file)
    data["clusters"][0]["certificates"]["proxy"][where] = value
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    text = str(info.value)
    assert text.startswith(f"clusters[0].certificates.proxy.{where}")
    assert expected.split(": ", 1)[-1].removeprefix("Value error, ") in text
    assert "\n" not in text


def test_defect12_good_names_and_wildcards_load(password_file: Path) -> None:
    data = doc(password_file)
    data["clusters"][0]["certificates"]["proxy"].update(
        alt_names=["*.re-east.example.com", "localhost"], ip_sans=["127.0.0.1", "::1"]
    )
    spec = parse_config(data).clusters[0].certificates[0]
    assert spec.ip_sans == ("127.0.0.1", "::1")


def test_install_timeouts_load_and_are_checked(password_file: Path) -> None:
    settings = parse_config(doc(password_file, install_timeout=60, internode_confirm_timeout=0))
    assert settings.clusters[0].install_timeout == 60
    assert settings.clusters[0].internode_confirm_timeout == 0
    with pytest.raises(ConfigError, match=r"clusters\[0\].install_timeout"):
        parse_config(doc(password_file, install_timeout=0))
