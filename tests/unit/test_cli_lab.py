"""`vault-bridge demo` comes from the lab distribution, found through its entry point."""

from __future__ import annotations

import importlib.metadata

import pytest
from click.testing import CliRunner

from vault_bridge.cli.main import cli


def test_the_lab_is_found_through_its_entry_point() -> None:
    (found,) = importlib.metadata.entry_points(group="vault_bridge.lab", name="demo")
    assert found.value == "vault_bridge_lab.demo:run_demo"
    assert callable(found.load())


def test_demo_without_the_lab_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def without_lab(**selection: str) -> importlib.metadata.EntryPoints:
        assert selection.get("group") == "vault_bridge.lab"
        return importlib.metadata.EntryPoints(())

    monkeypatch.setattr(importlib.metadata, "entry_points", without_lab)
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: vault-bridge demo needs the lab: pip install ./lab (or run: python3 dev.py demo)"
    ]
