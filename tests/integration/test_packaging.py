"""The runtime wheel carries no lab code; the lab wheel carries it and the demo entry point.

Both wheels are built from this checkout with pip, as a release would build them.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB_MARKERS = ("vault_bridge_lab", "simulator", "openbao", "crdb_cli", "crdb-cli", "testing/")


def _build(source: Path, out: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    base = tmp_path_factory.mktemp("wheels")
    runtime = _build(REPO, base / "runtime")
    lab = _build(REPO / "lab", base / "lab")
    return {"runtime": zipfile.ZipFile(runtime), "lab": zipfile.ZipFile(lab)}


def test_runtime_wheel_has_no_lab_code(wheels: dict[str, zipfile.ZipFile]) -> None:
    names = wheels["runtime"].namelist()
    assert "vault_bridge/cli/main.py" in names
    assert "vault_bridge/adapters/redis_enterprise.py" in names
    offending = [n for n in names if any(marker in n for marker in LAB_MARKERS)]
    assert offending == []


def test_runtime_wheel_metadata(wheels: dict[str, zipfile.ZipFile]) -> None:
    zf = wheels["runtime"]
    (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
    text = zf.read(meta).decode()
    assert "License-Expression: Apache-2.0" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in zf.namelist())
    # The docker SDK is an extra, not a dependency of every install.
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist: docker")]
    assert requires and all("extra ==" in line for line in requires)
    (eps,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "vault-bridge = vault_bridge.cli.main:main" in zf.read(eps).decode()


def test_lab_wheel_carries_the_lab_and_the_demo(wheels: dict[str, zipfile.ZipFile]) -> None:
    zf = wheels["lab"]
    names = zf.namelist()
    for expected in (
        "vault_bridge_lab/simulator/rest.py",
        "vault_bridge_lab/openbao.py",
        "vault_bridge_lab/crdb_cli.py",
        "vault_bridge_lab/crdb-cli",
        "vault_bridge_lab/demo.py",
    ):
        assert expected in names
    assert not any(n.startswith("vault_bridge/") for n in names)
    (eps,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zf.read(eps).decode()
    assert "[vault_bridge.lab]" in text
    assert "demo = vault_bridge_lab.demo:run_demo" in text
