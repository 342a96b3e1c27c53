"""The agent through Vault PKI's own lifecycle, in process with an injected clock (no waiting
for real Saturdays): maintenance windows and their safety margin, the overdue alarm, and the
operator's `issue` past the runaway guard. Real OpenBao, the simulated cluster on loopback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from vault_bridge_lab.lab import cluster_table, lab_config, to_toml
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

from vault_bridge.agent.daemon import Agent
from vault_bridge.agent.health import Metrics
from vault_bridge.agent.oneshot import rotate_once
from vault_bridge.cli.main import cli
from vault_bridge.config.loading import parse_config
from vault_bridge.config.settings import Settings
from vault_bridge.config.windows import DAYS
from vault_bridge.decisions.renewal import renewal_time
from vault_bridge.decisions.schedule import attempt_at
from vault_bridge.models.certificates import CertificateInfo

pytestmark = pytest.mark.usefixtures("lab_env")

KEY = ("east", "proxy")
BULK = "/v1/cluster/certificates"


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def set(self, at: datetime) -> None:
        self.offset = at - datetime.now(UTC)


def document_for(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    *,
    defaults: dict[str, Any] | None = None,
    agent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return lab_config(
        openbao,
        pki,
        [cluster_table(sim, tmp_path, role="redis", names=("proxy",))],
        state_dir=tmp_path / "state",
        defaults={"key_type": "ec", "key_bits": 256, "ttl": "720h", **(defaults or {})},
        agent={"max_issues_per_hour": 100, **(agent or {})},
    )


def settings_for(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    *,
    defaults: dict[str, Any] | None = None,
    agent: dict[str, Any] | None = None,
) -> Settings:
    return parse_config(document_for(openbao, pki, sim, tmp_path, defaults=defaults, agent=agent))


class InProcessAgent:
    """The daemon's steps without its loop: each :meth:`step` is one wake-up."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.metrics = Metrics()
        self.agent = Agent(settings, clock=clock, metrics=self.metrics)

    def step(self) -> None:
        self.agent._step()
        self.agent._publish()

    def sample(self, metric: str, **labels: str) -> float | None:
        text = self.metrics.exposition().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == metric and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    def close(self) -> None:
        self.agent._close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_agent() -> Iterator[Any]:
    made: list[InProcessAgent] = []

    def make(settings: Settings, clock: Clock) -> InProcessAgent:
        agent = InProcessAgent(settings, clock)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


def served(sim: SimulatedCluster) -> CertificateInfo:
    return CertificateInfo.from_pem(sim.installed_pem("proxy"))


def weekly_window(at: datetime, hours: int = 2) -> str:
    """A weekly window opening at ``at`` (UTC, to the minute)."""
    end = at + timedelta(hours=hours)
    return f"{DAYS[at.weekday()]} {at:%H:%M}-{end:%H:%M} UTC"


def test_planned_renewal_waits_for_the_maintenance_window(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    clock: Clock,
    make_agent: Any,
) -> None:
    # 30-day certificates renewed at 2/3 (18.5 to 20 days with the jitter); the window opens
    # 20.5 days from now, before the safety deadline (80% of the lifetime, day 24)
    opening = (datetime.now(UTC) + timedelta(days=20, hours=12)).replace(second=0, microsecond=0)
    window = weekly_window(opening)
    settings = settings_for(openbao, pki, sim, tmp_path, defaults={"maintenance_window": window})
    agent = make_agent(settings, clock)
    agent.step()  # a foreign certificate is replaced at once, whatever the window
    first = served(sim)
    assert first.issuer != first.subject
    spec = settings.clusters[0].certificates[0]
    renew = renewal_time(spec, first)
    assert renew < opening
    view = agent.agent.passes.views[KEY]
    assert (view.state, view.renew_at, view.window) == ("ok", opening, window)

    clock.set(renew + timedelta(minutes=1))  # due, but the window is days away
    agent.step()
    assert served(sim).serial == first.serial
    view = agent.agent.passes.views[KEY]
    assert view.state == "due" and view.renew_at == opening
    (tracked,) = agent.agent.passes.tracked(clock())
    assert attempt_at(tracked, clock(), replace_foreign=True) == opening
    assert agent.sample(
        "vault_bridge_certificate_renewal_timestamp_seconds", cluster="east", name="proxy"
    ) == pytest.approx(opening.timestamp())

    clock.set(opening + timedelta(minutes=1))  # the window is open
    agent.step()
    assert served(sim).serial != first.serial
    assert agent.sample("vault_bridge_window_overrides_total", cluster="east", name="proxy") == 0


def test_safety_margin_overrides_the_window(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    clock: Clock,
    make_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the window opens on day 23.5, after the deadline (30% of the lifetime left: day 21)
    opening = (datetime.now(UTC) + timedelta(days=23, hours=12)).replace(second=0, microsecond=0)
    settings = settings_for(
        openbao,
        pki,
        sim,
        tmp_path,
        defaults={"maintenance_window": weekly_window(opening), "window_safety_margin": 0.3},
    )
    agent = make_agent(settings, clock)
    agent.step()
    first = served(sim)
    spec = settings.clusters[0].certificates[0]
    deadline = first.not_after - (first.not_after - first.not_before) * 0.3
    clock.set(renewal_time(spec, first) + timedelta(minutes=1))
    agent.step()
    assert served(sim).serial == first.serial  # waits, up to the deadline
    assert agent.agent.passes.views[KEY].renew_at == deadline
    caplog.clear()
    clock.set(deadline + timedelta(minutes=1))
    with caplog.at_level(logging.WARNING):
        agent.step()
    assert served(sim).serial != first.serial
    warnings = [r for r in caplog.records if "outside every maintenance window" in r.getMessage()]
    assert warnings and warnings[0].levelno == logging.WARNING
    assert agent.sample("vault_bridge_window_overrides_total", cluster="east", name="proxy") == 1


def test_overdue_certificate_escalates_and_clears_once_renewed(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    clock: Clock,
    make_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(openbao, pki, sim, tmp_path)
    agent = make_agent(settings, clock)
    agent.step()
    first = served(sim)
    spec = settings.clusters[0].certificates[0]
    renew = renewal_time(spec, first)
    overdue_at = renew + (first.not_after - first.not_before) * 0.05
    overdue = ("vault_bridge_certificate_renewal_overdue", {"cluster": "east", "name": "proxy"})
    assert agent.sample(overdue[0], **overdue[1]) == 0

    sim.inject_fault("PUT", BULK, 400, times=3)  # the cluster refuses the next installs
    clock.set(renew + timedelta(minutes=1))
    agent.step()
    assert served(sim).serial == first.serial
    assert agent.sample(overdue[0], **overdue[1]) == 0  # late, not overdue yet

    for minutes in (1, 30):
        caplog.clear()
        clock.set(overdue_at + timedelta(minutes=minutes))
        with caplog.at_level(logging.WARNING):
            agent.step()
        errors = [r for r in caplog.records if "is overdue" in r.getMessage()]
        assert len(errors) == 1 and errors[0].levelno == logging.ERROR  # one each attempt
        assert agent.sample(overdue[0], **overdue[1]) == 1
        assert served(sim).serial == first.serial

    # status --json: the last error and the next attempt, from the agent's state directory
    config = tmp_path / "config.toml"
    config.write_text(to_toml(document_for(openbao, pki, sim, tmp_path)), encoding="utf-8")
    shown = CliRunner().invoke(cli, ["--config", str(config), "status", "--json"])
    assert shown.exit_code == 0, shown.output
    (row,) = json.loads(shown.stdout)
    assert "injected fault: 400" in (row["last_error"] or "")
    next_attempt = datetime.fromisoformat(row["next_attempt"].replace("Z", "+00:00"))
    assert next_attempt > overdue_at  # the backoff of the last failure (by the agent's clock)

    clock.set(overdue_at + timedelta(hours=1))  # the faults are used up: renewed
    agent.step()
    renewed = served(sim)
    assert renewed.serial != first.serial
    # The renewed certificate's lifetime starts at Vault's (real) time, far behind the test's
    # clock: up to its jittered renewal time it is not overdue.
    clock.set(renewal_time(spec, renewed) - timedelta(minutes=1))
    agent.agent._publish()
    assert agent.sample(overdue[0], **overdue[1]) == 0


def test_explicit_issue_past_the_runaway_guard(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # due one minute after issue, so that an automatic pass would re-issue at once
    settings = settings_for(
        openbao,
        pki,
        sim,
        tmp_path,
        defaults={"ttl": "2h", "renew_before": "119m"},
        agent={"max_issues_per_hour": 1},
    )
    serials = set()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            result = rotate_once(settings, force=[KEY], only={KEY})
            assert result.ok, result.summary()
            serials.add(served(sim).serial)
    assert len(serials) == 3
    past = [r for r in caplog.records if "explicit issue past the runaway guard" in r.getMessage()]
    assert len(past) == 2 and all(r.levelno == logging.WARNING for r in past)
    # the command itself, past the guard: exit 0 and a new certificate
    config = tmp_path / "config.toml"
    document = document_for(
        openbao,
        pki,
        sim,
        tmp_path,
        defaults={"ttl": "2h", "renew_before": "119m"},
        agent={"max_issues_per_hour": 1},
    )
    config.write_text(to_toml(document), encoding="utf-8")
    done = CliRunner().invoke(cli, ["--config", str(config), "issue", "proxy"])
    assert done.exit_code == 0, done.output
    assert served(sim).serial not in serials
    serials.add(served(sim).serial)
    # the explicit issues count towards the guard of the automatic decisions
    later = datetime.now(UTC) + timedelta(minutes=5)
    result = rotate_once(settings, clock=lambda: later)
    assert not result.ok
    assert any("runaway guard" in (o.error or "") for o in result.failed), result.summary()
    assert served(sim).serial in serials
