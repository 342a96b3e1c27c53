"""examples/monitoring/: the Prometheus rules pass `promtool check rules`, and the rules and the
Grafana dashboard name only metrics the agent exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from vault_bridge.agent.health import CertSample, Metrics, Snapshot

MONITORING = Path(__file__).resolve().parents[2] / "examples" / "monitoring"
# names Prometheus itself provides
PROMETHEUS_OWN = {"up"}
METRIC = re.compile(r"\b(vault_bridge_[a-z0-9_]+)\b")


def exported() -> set[str]:
    """Every sample name the agent's /metrics can carry (counters with _total, histograms with
    _bucket, _sum and _count)."""
    metrics = Metrics()
    at = datetime(2026, 12, 1, tzinfo=UTC)
    metrics.publish(
        Snapshot(
            certificates=(CertSample("east", "proxy", at, at, "True", False),),
            rotations={("east", "proxy", "success"): 1},
            token_expires_at=at,
            leaders={"east": True},
            lease_renewal_failures={"east": 1},
        )
    )
    metrics.followup_window.labels(cluster="east", stage="finished").observe(0.1)
    text = metrics.exposition().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_agent_exports_the_lifecycle_metrics() -> None:
    names = exported()
    for name in (
        "vault_bridge_certificate_renewal_overdue",
        "vault_bridge_certificate_issuer_expiring",
        "vault_bridge_certificate_issuer_outdated",
        "vault_bridge_window_overrides_total",
        "vault_bridge_certificate_expiring",
    ):
        assert name in names


def _exprs(value: Any) -> list[str]:
    if isinstance(value, dict):
        out = [value["expr"]] if isinstance(value.get("expr"), str) else []
        for item in value.values():
            out.extend(_exprs(item))
        return out
    if isinstance(value, list):
        return [e for item in value for e in _exprs(item)]
    return []


def _unknown(exprs: list[str]) -> set[str]:
    known = exported()
    used = {m for e in exprs for m in METRIC.findall(e)}
    return used - known


def test_alert_rules_name_only_exported_metrics() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text(encoding="utf-8"))
    exprs = _exprs(rules)
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "VaultBridgeAgentDown",
        "VaultBridgeCertificateExpiring",
        "VaultBridgeRenewalOverdue",
        "VaultBridgeIssuerExpiring",
    } <= alerts
    assert _unknown(exprs) == set()
    assert any("up{" in e for e in exprs)


def test_grafana_dashboard_is_json_naming_only_exported_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = _exprs(dashboard["panels"])
    assert len(exprs) >= 8
    assert _unknown(exprs) == set()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_a_misspelt_metric_would_be_caught() -> None:
    assert _unknown(["vault_bridge_certificate_renewal_overdue_total == 1"]) == {
        "vault_bridge_certificate_renewal_overdue_total"
    }


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is absent (Debian package 'prometheus'; .ci/run installs it)",
)
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(MONITORING / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in done.stdout
