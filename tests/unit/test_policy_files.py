"""policies/ stays what `vault-bridge policy` generates for examples/config.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from vault_bridge.config.loading import parse_config
from vault_bridge.decisions.policy import desired_role, policy_rules, render_policy, roles_in

ROOT = Path(__file__).resolve().parents[2]


def example_settings(monkeypatch: pytest.MonkeyPatch, **agent: object):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RE_EAST_PASSWORD", "x")
    data = tomllib.loads((ROOT / "examples" / "config.toml").read_text())
    data["vault"].pop("ca_cert")  # files that exist only on a real host
    for cluster in data["clusters"]:
        cluster.pop("ca_file", None)
    data["agent"].update(agent)
    return parse_config(data)


def test_policy_file_matches_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = example_settings(monkeypatch)
    assert (ROOT / "policies" / "vault-bridge.hcl").read_text() == render_policy(
        settings, "examples/config.toml"
    )


def test_revoke_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [r.path for r in policy_rules(example_settings(monkeypatch, revoke_superseded=False))]
    assert "pki_int/revoke" not in paths
    assert paths[0] == "pki_int/sign/redis-enterprise"


def test_desired_role(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = example_settings(monkeypatch)
    specs = roles_in(settings)[("pki_int", "redis-enterprise")]
    role = desired_role(specs)
    assert role["server_flag"] and role["client_flag"]
    assert role["generate_lease"] is False
    assert role["key_type"] == "any"  # sign mode: the CSR carries the key
    assert "*.re-east.example.com" in role["allowed_domains"]
    assert role["allow_glob_domains"] and role["allow_wildcard_certificates"]
    assert role["max_ttl"] == "720h"
