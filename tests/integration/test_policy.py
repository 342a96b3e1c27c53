"""The generated least-privilege policy, proven against a real OpenBao."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from click.testing import CliRunner
from vault_bridge_lab.lab import (
    ADMIN_PASSWORD,
    PASSWORD_ENV,
    cluster_table,
    lab_config,
    to_toml,
)
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

from tests.conftest import register_secret
from vault_bridge.cli.main import cli
from vault_bridge.config.loading import parse_config
from vault_bridge.config.settings import Settings
from vault_bridge.decisions.policy import render_policy
from vault_bridge.errors import VaultPermissionError
from vault_bridge.rotation.app import build, vault_client
from vault_bridge.rotation.vault_setup import setup_roles


def settings_for(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    role: str = "redis",
) -> dict[str, Any]:
    return lab_config(
        openbao,
        pki,
        [cluster_table(sim, tmp_path, role=role, names=("proxy", "cm"))],
        state_dir=tmp_path / "state",
        defaults={"key_type": "ec", "key_bits": 256, "ttl": "72h"},
    )


def limited_token(openbao: OpenBaoServer, settings: Settings) -> str:
    root = openbao.client()
    name = f"vb-{uuid.uuid4().hex[:8]}"
    root.sys.create_or_update_policy(name=name, policy=render_policy(settings))
    token = root.auth.token.create(policies=[name], no_default_policy=True, ttl="1h")["auth"][
        "client_token"
    ]
    register_secret(token)
    return str(token)


def test_policy_text_names_exactly_the_paths(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, ADMIN_PASSWORD)
    settings = parse_config(settings_for(openbao, pki, sim, tmp_path))
    text = render_policy(settings)
    paths = [line.split('"')[1] for line in text.splitlines() if line.startswith("path ")]
    m = pki.issuing_mount
    assert paths == [
        f"{m}/sign/redis",
        f"{m}/roles/redis",
        f"{m}/revoke",
        "auth/token/renew-self",
        "auth/token/lookup-self",
    ]
    assert all(
        line.startswith("#")
        for line, nxt in zip(text.splitlines(), text.splitlines()[1:], strict=False)
        if nxt.startswith("path ")
    )


def test_rotation_works_with_only_the_policy_and_nothing_more(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, ADMIN_PASSWORD)
    doc = settings_for(openbao, pki, sim, tmp_path)
    settings = parse_config(doc)
    token = limited_token(openbao, settings)
    monkeypatch.setenv("VAULT_TOKEN", token)
    with build(parse_config(doc), sleep=lambda s: None) as app:
        result = app.rotator.run_once()
        assert result.ok, result.summary()
        app.vault.renew_self()
        app.vault.lookup_self()
        app.vault.read_role(pki.issuing_mount, "redis")
        old = result.outcomes[0].serial
        assert old
        app.vault.revoke(pki.issuing_mount, serial=old)

    limited = hvac.Client(url=openbao.address, token=token, verify=openbao.ca_cert)
    forbidden: list[Callable[[], object]] = [
        lambda: limited.write(
            f"{pki.issuing_mount}/issue/redis-rsa", common_name="x.example.com"
        ),  # another role
        lambda: limited.write(
            f"{pki.issuing_mount}/issue/redis", common_name="x.example.com"
        ),  # issue, not sign
        lambda: limited.write(
            f"{pki.issuing_mount.replace('pki-', 'pki-root-', 1)}/sign/redis", csr="x"
        ),  # another mount
        lambda: limited.sys.list_mounted_secrets_engines(),  # sys/
        lambda: limited.sys.create_or_update_policy(
            name="mine", policy='path "*" { capabilities = ["sudo"] }'
        ),
        lambda: limited.read("secret/data/redis-passwords"),  # another secret
        lambda: limited.auth.token.create(policies=["default"]),
    ]
    root = openbao.client()
    if "secret/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret(path="redis-passwords", secret={"east": "x"})
    for attempt in forbidden:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()
    limited.adapter.close()


def test_vault_setup_creates_and_fixes_roles(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, ADMIN_PASSWORD)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    role = f"setup-{uuid.uuid4().hex[:6]}"
    doc = settings_for(openbao, pki, sim, tmp_path, role=role)
    config = tmp_path / "config.toml"
    config.write_text(to_toml(doc))
    runner = CliRunner()

    check = runner.invoke(cli, ["--config", str(config), "vault-setup", "--check"])
    assert check.exit_code == 2
    assert f"{role}: would be created" in check.stdout

    created = runner.invoke(cli, ["--config", str(config), "vault-setup"])
    assert created.exit_code == 0, created.output
    assert "created" in created.stdout
    assert runner.invoke(cli, ["--config", str(config), "validate", "--connect"]).exit_code == 0

    # Someone turns client_flag off: validate --connect catches it, vault-setup puts it back.
    root = openbao.client()
    data = root.read(f"{pki.issuing_mount}/roles/{role}")["data"]
    root.write(f"{pki.issuing_mount}/roles/{role}", **{**data, "client_flag": False})
    broken = runner.invoke(cli, ["--config", str(config), "validate", "--connect"])
    assert broken.exit_code == 1
    assert "client_flag false" in broken.output
    fixed = runner.invoke(cli, ["--config", str(config), "vault-setup"])
    assert "updated: client_flag=True" in fixed.stdout
    with vault_client(parse_config(doc)) as vault:
        vault.ensure_token()
        assert setup_roles(vault, parse_config(doc), apply=False).changes == 0
    with build(parse_config(doc), sleep=lambda s: None) as app:
        assert app.rotator.run_once().ok


def test_policy_command_prints_hcl(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, ADMIN_PASSWORD)
    config = tmp_path / "config.toml"
    config.write_text(to_toml(settings_for(openbao, pki, sim, tmp_path)))
    result = CliRunner().invoke(cli, ["--config", str(config), "policy"])
    assert result.exit_code == 0
    assert f'path "{pki.issuing_mount}/sign/redis" {{' in result.stdout
    assert "sys/" not in result.stdout.replace("Nothing under sys/", "")


def test_cluster_password_from_vault_kv_with_only_the_policy(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """password_vault: the password is read from KV v2 with the policy's one read grant."""
    root = openbao.client()
    mount = f"kv-{uuid.uuid4().hex[:6]}"
    root.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret(
        mount_point=mount, path="redis/east", secret={"password": ADMIN_PASSWORD}
    )
    root.secrets.kv.v2.create_or_update_secret(
        mount_point=mount, path="redis/west", secret={"password": "other"}
    )
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    doc = settings_for(openbao, pki, sim, tmp_path)
    del doc["clusters"][0]["password_env"]
    doc["clusters"][0]["password_vault"] = f"{mount}/redis/east#password"
    settings = parse_config(doc)
    assert f'path "{mount}/data/redis/east" {{' in render_policy(settings)
    token = limited_token(openbao, settings)
    monkeypatch.setenv("VAULT_TOKEN", token)
    with build(settings, sleep=lambda s: None) as app:
        result = app.rotator.run_once()
        assert result.ok, result.summary()
        with pytest.raises(VaultPermissionError, match=f"needs 'read' on {mount}/data/redis/west"):
            app.vault.read_kv(mount, "redis/west", "password")
    doc["clusters"][0]["password_vault"] = f"{mount}/redis/east#passwd"
    with build(parse_config(doc), sleep=lambda s: None) as app:
        errors = app.rotator.status().cluster_errors
    assert errors["east"].endswith(f"the secret at {mount}/data/redis/east has no key 'passwd'")
