"""Invalid configuration files: each gives one line naming what is wrong, exit 2, and touches
nothing (no state directory is created)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from vault_bridge_lab.lab import to_toml

from tests.faults.outcome import assert_clear_failure, invoke

pytestmark = pytest.mark.fault("config")

BASE: dict[str, Any] = {
    "vault": {"address": "https://vault.example.com:8200"},
    "agent": {"state_dir": "STATE"},
    "clusters": [
        {
            "name": "east",
            "url": "https://re-east.example.com:9443",
            "username": "admin@example.com",
            "password_file": "PASSWORD",
            "certificates": {
                "proxy": {"role": "redis", "common_name": "re-east.example.com"},
            },
        }
    ],
}


def cluster(**changes: Any) -> Any:
    def apply(doc: dict[str, Any]) -> None:
        doc["clusters"][0].update(changes)

    return apply


def cert(**changes: Any) -> Any:
    def apply(doc: dict[str, Any]) -> None:
        doc["clusters"][0]["certificates"]["proxy"].update(changes)

    return apply


def section(name: str, **changes: Any) -> Any:
    def apply(doc: dict[str, Any]) -> None:
        doc.setdefault(name, {}).update(changes)

    return apply


def drop(*path: str) -> Any:
    def apply(doc: dict[str, Any]) -> None:
        target: Any = doc
        for part in path[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        del target[path[-1]]

    return apply


CASES: list[tuple[str, Any, str]] = [
    ("ip_sans not an IP", cert(ip_sans=["not-an-ip"]), "certificates.proxy.ip_sans"),
    ("ip_sans out of range", cert(ip_sans=["10.0.0.256"]), "certificates.proxy.ip_sans"),
    ("ip_sans not a list", cert(ip_sans="10.0.0.1"), "certificates.proxy.ip_sans"),
    ("alt name with space", cert(alt_names=["bad name"]), "certificates.proxy.alt_names"),
    ("alt name too long label", cert(alt_names=["a" * 64 + ".x"]), "alt_names"),
    ("alt name trailing hyphen", cert(alt_names=["a-.example.com"]), "alt_names"),
    ("common_name empty", cert(common_name=""), "certificates.proxy.common_name"),
    ("common_name URL", cert(common_name="https://x"), "certificates.proxy.common_name"),
    ("role empty", cert(role=""), "certificates.proxy.role"),
    ("role missing", drop("clusters", "0", "certificates", "proxy", "role"), "proxy.role"),
    (
        "unknown certificate",
        lambda d: d["clusters"][0]["certificates"].update(
            {"proxi": {"role": "r", "common_name": "x.example.com"}}
        ),
        "proxi",
    ),
    ("unknown cert key", cert(commonname="x"), "commonname: unknown key"),
    ("ttl garbage", cert(ttl="forever"), "certificates.proxy.ttl"),
    ("renew_at above 1", cert(renew_at=1.5), "certificates.proxy.renew_at"),
    ("renew_at and renew_before", cert(renew_at=0.5, renew_before="24h"), "not both"),
    ("renew_before past ttl", cert(ttl="24h", renew_before="48h"), "renew_before"),
    ("key_bits for ec", cert(key_type="ec", key_bits=2048), "key_bits"),
    ("key_type unknown", cert(key_type="dsa"), "key_type"),
    ("mode unknown", cert(mode="steal"), "mode"),
    (
        "internode with ec",
        lambda d: d["clusters"][0]["certificates"].update(
            {
                "ccs_internode_encryption": {
                    "role": "r",
                    "common_name": "c.example.com",
                    "key_type": "ec",
                }
            }
        ),
        "RSA keys only",
    ),
    ("url http", cluster(url="http://re-east.example.com:9443"), "clusters[0].url"),
    ("url no host", cluster(url="https://"), "clusters[0].url"),
    ("url missing", drop("clusters", "0", "url"), "clusters[0].url"),
    ("name empty", cluster(name=""), "clusters[0].name"),
    ("username missing", drop("clusters", "0", "username"), "clusters[0].username"),
    ("two password sources", cluster(password_env="X"), "exactly one of"),
    ("no password source", drop("clusters", "0", "password_file"), "exactly one of"),
    ("password file missing", cluster(password_file="/nonexistent/pw"), "password_file"),
    (
        "password_env unset",
        lambda d: (
            d["clusters"][0].pop("password_file"),
            d["clusters"][0].update(password_env="NO_SUCH_ENV_X"),
        ),
        "password_env",
    ),
    (
        "password_vault form",
        lambda d: (
            d["clusters"][0].pop("password_file"),
            d["clusters"][0].update(password_vault="secret"),
        ),
        "password_vault",
    ),
    ("fingerprint short", cluster(ca_fingerprint="abcd"), "ca_fingerprint"),
    ("ca_file missing", cluster(ca_file="/nonexistent/ca.pem"), "ca_file"),
    ("timeout zero", cluster(timeout=0), "clusters[0].timeout"),
    ("timeout text", cluster(timeout="fast"), "clusters[0].timeout"),
    ("install_timeout negative", cluster(install_timeout=-1), "install_timeout"),
    (
        "internode_confirm_timeout negative",
        cluster(internode_confirm_timeout=-5),
        "internode_confirm_timeout",
    ),
    ("crdb_update unknown", cluster(crdb_update="magic"), "crdb_update"),
    ("docker without container", cluster(crdb_update="docker"), "docker_container"),
    ("verify endpoint no port", cluster(verify_endpoints={"cm": "host"}), "verify_endpoints.cm"),
    (
        "verify endpoint bad port",
        cluster(verify_endpoints={"cm": "host:99999"}),
        "verify_endpoints.cm",
    ),
    (
        "verify endpoint unknown name",
        cluster(verify_endpoints={"cn": "h:1"}),
        "verify_endpoints.cn",
    ),
    ("cluster typo key", cluster(usernme="x"), "usernme: unknown key"),
    (
        "duplicate cluster",
        lambda d: d["clusters"].append(copy.deepcopy(d["clusters"][0])),
        "duplicate cluster name",
    ),
    ("no clusters", lambda d: d.update(clusters=[]), "clusters"),
    ("vault address ftp", section("vault", address="ftp://vault"), "vault.address"),
    ("vault address no host", section("vault", address="https://"), "vault.address"),
    ("vault timeout zero", section("vault", timeout=0), "vault.timeout"),
    ("vault ca_cert missing", section("vault", ca_cert="/nonexistent/ca.pem"), "vault.ca_cert"),
    ("vault auth unknown method", section("vault", auth={"method": "ldap"}), "vault.auth.method"),
    (
        "approle without role_id",
        section("vault", auth={"method": "approle", "secret_id_file": "/x"}),
        "role_id",
    ),
    (
        "token with role_id",
        section("vault", auth={"method": "token", "role_id": "x"}),
        "does not apply",
    ),
    ("agent listen bad", section("agent", listen="nowhere"), "agent.listen"),
    ("agent resync garbage", section("agent", resync_interval="often"), "agent.resync_interval"),
    ("agent max issues zero", section("agent", max_issues_per_hour=0), "max_issues_per_hour"),
    ("agent log format", section("agent", log_format="xml"), "agent.log_format"),
    ("unknown top-level", section("vaults"), "vaults: unknown key"),
    ("defaults typo", section("defaults", tll="24h"), "defaults.tll: unknown key"),
]

RAW: list[tuple[str, bytes, str]] = [
    ("not TOML", b"[vault\naddress = ", "not valid TOML"),
    ("not UTF-8", b"\xff\xfe\x00bad", "not valid TOML"),
    ("empty file", b"", "clusters"),
    ("a JSON file", b'{"vault": {}}', "not valid TOML"),
]


def fill(doc: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "pw").write_text("s3cret\n")
    text = to_toml(doc).replace("PASSWORD", str(tmp_path / "pw"))
    return {"text": text.replace("STATE", str(tmp_path / "state"))}


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_configuration(tmp_path: Path, mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    path = tmp_path / "config.toml"
    path.write_text(fill(doc, tmp_path)["text"])
    ran = invoke("--config", str(path), "validate")
    line = assert_clear_failure(ran, 2, expected)
    assert "s3cret" not in ran.output
    assert not (tmp_path / "state").exists(), line


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in RAW], ids=[c[0] for c in RAW])
def test_unreadable_configuration(tmp_path: Path, raw: bytes, expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(raw)
    assert_clear_failure(invoke("--config", str(path), "run", "--once"), 2, expected)


@pytest.mark.parametrize("kind", ["directory", "missing", "unreadable"])
def test_config_path_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "unreadable":
        path.write_text("x = 1\n")
        path.chmod(0)
    ran = invoke("--config", str(path), "validate")
    # (as root an unreadable file is read anyway: "x" is then an unknown key, still exit 2)
    assert_clear_failure(ran, 2)
    assert "Usage:" not in ran.output
