"""The outcome users care about, asserted the same way for every fault."""

from __future__ import annotations

from click.testing import CliRunner, Result
from vault_bridge_lab.simulator import SimulatedCluster

from tests.conftest import find_secrets
from vault_bridge.adapters.tls_probe import served_certificate
from vault_bridge.cli.main import cli


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    print(result.output)  # the suite-wide secret scan sees every line
    return result


def assert_clear_failure(result: Result, code: int, *needles: str) -> str:
    """Exit ``code``, one ``error:`` line naming the cause, no traceback, nothing secret."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    assert find_secrets(result.output) == []
    return errors[0]


def installed(sim: SimulatedCluster, names: tuple[str, ...]) -> dict[str, str]:
    """What the cluster holds for each name and, for those with a listener, what it serves
    (a TLS handshake): the old certificates must still be both after a fault."""
    out = {name: sim.installed_pem(name) for name in names}
    for name in names:
        if name in ("api", "cm", "metrics_exporter", "proxy"):
            out[f"{name} served"] = served_certificate(sim.endpoint(name)).fingerprint
    return out
