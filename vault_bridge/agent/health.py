"""The agent's HTTP listener: ``/healthz``, ``/readyz`` and ``/metrics``.

Metrics come from a private :class:`prometheus_client.CollectorRegistry` (never the global one)
and are computed at scrape time from the last :class:`Snapshot` the agent published, the way
``prometheus_client``'s process collector works. Names follow cert-manager's.

The follow-up module records how long the Active-Active / Replica Of window stayed open in
:attr:`Metrics.followup_window`, a histogram registered here on the same registry::

    metrics.followup_window.labels(cluster="east", stage="request_sent").observe(seconds)

(the agent hands its :class:`Metrics` to ``FollowUps.from_settings(settings, metrics=...)``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vault_bridge.config.validators import parse_hostport
from vault_bridge.decisions.login import LOGIN_NAME
from vault_bridge.errors import VaultBridgeError
from vault_bridge.models.cluster import OCSP_STATUSES
from vault_bridge.rotation.login import LoginCertificate

logger = logging.getLogger(__name__)

Condition = Literal["True", "False", "Unknown"]
CONDITIONS: tuple[Condition, ...] = ("True", "False", "Unknown")
# The window is milliseconds when all goes well (step 2 sent) and seconds to minutes for the
# tasks to finish: buckets cover both.
FOLLOWUP_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)


@dataclass(frozen=True)
class CertSample:
    """One configured certificate as the agent last saw it."""

    cluster: str
    name: str
    not_after: datetime | None
    renew_at: datetime | None
    condition: Condition  # Ready: True (ours, valid), False (missing, foreign, expired), Unknown
    expiring: bool
    overdue: bool = False  # renewal time passed by more than overdue_after, not renewed
    issuer_expiring: bool = False  # the issuer of its next certificate expires within a lifetime
    issuer_outdated: bool = False  # signed by another issuer than the one that signs the next
    window_overrides: int = 0  # renewals outside every maintenance window since the start


@dataclass(frozen=True)
class Snapshot:
    """What the agent publishes after every step; read by scrapes and ``/readyz``."""

    certificates: tuple[CertSample, ...] = ()
    rotations: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    token_expires_at: datetime | None = None
    ready: bool = False
    reasons: tuple[str, ...] = ("the agent is starting",)
    # The proxy certificate's OCSP status by cluster (stapling on): GOOD, REVOKED, UNKNOWN.
    ocsp: Mapping[str, str] = field(default_factory=dict)

    # (cluster, name) -> since when the follow-ups of its last change have been pending
    followups_pending: Mapping[tuple[str, str], datetime] = field(default_factory=dict)
    # With [ha]: by cluster, whether this replica leads it, and its lease renewal failures.
    leaders: Mapping[str, bool] = field(default_factory=dict)
    lease_renewal_failures: Mapping[str, int] = field(default_factory=dict)


def login_samples(logins: Iterable[LoginCertificate], now: datetime) -> tuple[CertSample, ...]:
    """The login certificates (``login = "certificate"``) as ``/metrics`` shows them, under the
    name ``login_certificate``: Unknown until the first request issued one."""
    samples = []
    for login in logins:
        held = login.held
        condition: Condition = "Unknown"
        expiring = False
        if held is not None:
            info = held.info
            condition = "True" if info.not_after > now else "False"
            expiring = (info.not_after - now) < (info.not_after - info.not_before) * 0.1
        samples.append(
            CertSample(
                cluster=login.spec.cluster,
                name=LOGIN_NAME,
                not_after=held.not_after if held else None,
                renew_at=login.renew_at,
                condition=condition,
                expiring=expiring,
            )
        )
    return tuple(samples)


class Metrics:
    """The private registry and the agent's published snapshot."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self.followup_window = Histogram(
            "vault_bridge_followup_window_seconds",
            "How long an Active-Active / Replica Of follow-up window stayed open, by stage.",
            ["cluster", "stage"],
            buckets=FOLLOWUP_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_SnapshotCollector(self))

    def publish(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshot = snapshot

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _SnapshotCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        snap = self._metrics.snapshot()
        labels = ["cluster", "name"]
        expiration = GaugeMetricFamily(
            "vault_bridge_certificate_expiration_timestamp_seconds",
            "The date after which the installed certificate expires (Unix time).",
            labels=labels,
        )
        renewal = GaugeMetricFamily(
            "vault_bridge_certificate_renewal_timestamp_seconds",
            "The date at which the certificate is due for renewal (Unix time).",
            labels=labels,
        )
        ready = GaugeMetricFamily(
            "vault_bridge_certificate_ready_status",
            "The ready condition of the certificate (1 for the current condition).",
            labels=[*labels, "condition"],
        )
        expiring = GaugeMetricFamily(
            "vault_bridge_certificate_expiring",
            "1 when less than 10% of the certificate's lifetime is left, else 0.",
            labels=labels,
        )
        overdue = GaugeMetricFamily(
            "vault_bridge_certificate_renewal_overdue",
            "1 when the renewal time passed by more than overdue_after of the lifetime and the "
            "certificate is still not renewed, else 0.",
            labels=labels,
        )
        issuer_expiring = GaugeMetricFamily(
            "vault_bridge_certificate_issuer_expiring",
            "1 when the Vault issuer that signs the next certificate expires sooner than one "
            "lifetime of it, else 0.",
            labels=labels,
        )
        outdated = GaugeMetricFamily(
            "vault_bridge_certificate_issuer_outdated",
            "1 when the installed certificate was signed by another issuer of the mount than the "
            "one that signs its next certificate (the default, or issuer_ref), else 0.",
            labels=labels,
        )
        overrides = CounterMetricFamily(
            "vault_bridge_window_overrides",
            "Planned renewals done outside every maintenance window (safety margin reached).",
            labels=labels,
        )
        for cert in snap.certificates:
            key = [cert.cluster, cert.name]
            overdue.add_metric(key, 1.0 if cert.overdue else 0.0)
            issuer_expiring.add_metric(key, 1.0 if cert.issuer_expiring else 0.0)
            outdated.add_metric(key, 1.0 if cert.issuer_outdated else 0.0)
            overrides.add_metric(key, cert.window_overrides)
            if cert.not_after is not None:
                expiration.add_metric(key, cert.not_after.timestamp())
            if cert.renew_at is not None:
                renewal.add_metric(key, cert.renew_at.timestamp())
            for condition in CONDITIONS:
                ready.add_metric([*key, condition], 1.0 if condition == cert.condition else 0.0)
            expiring.add_metric(key, 1.0 if cert.expiring else 0.0)
        rotations = CounterMetricFamily(
            "vault_bridge_rotations",
            "Certificate rotations by result: success, failure, blocked (runaway guard).",
            labels=[*labels, "result"],
        )
        for (cluster, name, result), count in sorted(snap.rotations.items()):
            rotations.add_metric([cluster, name, result], count)
        token = GaugeMetricFamily(
            "vault_bridge_vault_token_expiration_timestamp_seconds",
            "When the agent's Vault token expires (Unix time); absent for a token that does not.",
        )
        if snap.token_expires_at is not None:
            token.add_metric([], snap.token_expires_at.timestamp())
        ocsp = GaugeMetricFamily(
            "vault_bridge_ocsp_status",
            "OCSP status the cluster staples for its proxy certificate (1 for the current one).",
            labels=["cluster", "status"],
        )
        for cluster, current in sorted(snap.ocsp.items()):
            for status in OCSP_STATUSES:
                ocsp.add_metric([cluster, status], 1.0 if status == current else 0.0)
        pending = GaugeMetricFamily(
            "vault_bridge_followups_pending_since_timestamp_seconds",
            "Since when the Active-Active / Replica Of follow-ups of the certificate's last "
            "change have been pending (Unix time); absent when none are.",
            labels=labels,
        )
        for (cluster, name), since in sorted(snap.followups_pending.items()):
            pending.add_metric([cluster, name], since.timestamp())
        yield from (expiration, renewal, ready, expiring, overdue, issuer_expiring, outdated)
        yield overrides
        yield from (rotations, token, pending, ocsp)
        if snap.leaders:
            yield from _ha_families(snap)


def _ha_families(snap: Snapshot) -> Iterable[Any]:
    leader = GaugeMetricFamily(
        "vault_bridge_leader",
        "1 on the replica that leads the cluster (holds its lease), else 0.",
        labels=["cluster"],
    )
    failures = CounterMetricFamily(
        "vault_bridge_lease_renewal_failures",
        "Lease renewals of the cluster that failed on this replica, since it started.",
        labels=["cluster"],
    )
    for cluster, leads in sorted(snap.leaders.items()):
        leader.add_metric([cluster], 1.0 if leads else 0.0)
        failures.add_metric([cluster], snap.lease_renewal_failures.get(cluster, 0))
    yield from (leader, failures)


# -- the listener ----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server_version = "vault-bridge"
    sys_version = ""

    @property
    def metrics(self) -> Metrics:
        server: Any = self.server
        metrics: Metrics = server.metrics
        return metrics

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("health: " + format, *args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        elif path == "/readyz":
            snap = self.metrics.snapshot()
            if snap.ready:
                self._send(200, "text/plain; charset=utf-8", b"ready\n")
            else:
                text = "not ready: " + "; ".join(snap.reasons) + "\n"
                self._send(503, "text/plain; charset=utf-8", text.encode())
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self.metrics.exposition())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: /healthz /readyz /metrics\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], metrics: Metrics) -> None:
        self.metrics = metrics
        super().__init__(address, _Handler)


class HealthServer:
    """The listener at ``[agent] listen`` in a background thread (start / close)."""

    def __init__(self, listen: str, metrics: Metrics) -> None:
        self.listen = listen
        self.metrics = metrics
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str | None:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        host, port = parse_hostport(self.listen, default_port=None)
        try:
            self._server = _Server((host, port), self.metrics)
        except OSError as exc:
            raise VaultBridgeError(
                f"[agent] listen: cannot listen on {self.listen}: {exc.strerror or exc}"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="vault-bridge-health",
            daemon=True,
        )
        self._thread.start()
        logger.info("health and metrics listening on http://%s", self.address)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def serving(listen: str, metrics: Metrics) -> Iterator[HealthServer | None]:
    """The listener for the block, or nothing when ``listen`` is empty."""
    if not listen:
        yield None
        return
    with HealthServer(listen, metrics) as server:
        yield server
