"""The CLI starts fast: `--help` loads no adapter and not the configuration schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from vault_bridge.cli.main import cli

HEAVY = ("pydantic", "hvac", "requests", "cryptography", "prometheus_client", "docker")


def test_help_imports_none_of_the_heavy_modules() -> None:
    probe = (
        "import sys\n"
        "from vault_bridge.cli.main import cli\n"
        "try:\n"
        "    cli(['--help'], prog_name='vault-bridge')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "Usage:" in done.stdout


def test_status_loads_neither_the_agent_nor_the_follow_ups_nor_metrics(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[vault]\naddress = "https://127.0.0.1:1"\n'
        '[[clusters]]\nname = "east"\nurl = "https://127.0.0.1:1"\nusername = "admin"\n'
        'password_env = "STARTUP_TEST_PASSWORD"\n'
        '[clusters.certificates.proxy]\nrole = "r"\ncommon_name = "proxy.example.com"\n'
    )
    probe = (
        "import sys\n"
        "from vault_bridge.cli.main import cli\n"
        "try:\n"
        f"    cli(['--config', {str(config)!r}, 'status'], prog_name='vault-bridge')\n"
        "except SystemExit:\n"
        "    pass\n"
        "names = ('vault_bridge.agent.daemon', 'vault_bridge.rotation.followups', "
        "'prometheus_client', 'docker')\n"
        "print('vault_bridge.rotation.executor' in sys.modules)\n"
        "print(sorted(m for m in names if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": "/usr/bin:/bin", "VAULT_TOKEN": "x", "STARTUP_TEST_PASSWORD": "pw"},
    )
    # it got as far as reading the cluster (the executor is loaded), and no further
    assert done.stdout.strip().splitlines()[-2:] == ["True", "[]"], done.stdout + done.stderr


def test_version_is_read_when_asked() -> None:
    from vault_bridge import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"vault-bridge, version {__version__}\n"


def test_concurrency_goes_with_once_only(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "--concurrency", "4"])
    assert result.exit_code == 2
    assert "--concurrency goes with --once" in result.output
    result = CliRunner().invoke(cli, ["run", "--once", "--concurrency", "0"])
    assert result.exit_code == 2
    assert "0 is not in the range 1<=x<=64" in result.output
