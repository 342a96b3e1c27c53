"""Shared test helpers: a small offline CA to make certificates of any shape."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class OfflineCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def leaf(
        self,
        cn: str = "leaf.example.com",
        *,
        not_before: datetime | None = None,
        lifetime: timedelta = timedelta(days=30),
        ekus: tuple[x509.ObjectIdentifier, ...] = (
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> tuple[str, str]:
        """(certificate PEM, key PEM)"""
        key = key or ec.generate_private_key(ec.SECP256R1())
        start = not_before or datetime.now(UTC) - timedelta(minutes=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
        )
        if ekus:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def make_ca(cn: str = "Test CA") -> OfflineCA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return OfflineCA(cert, key)


@pytest.fixture(scope="session")
def test_ca() -> OfflineCA:
    return make_ca()


# ---------------------------------------------------------------------------
# Secret scan: every captured log and output line of the suite (and every file written to the
# shared test log directory, e.g. daemon logs) is searched for private keys and Vault tokens.
# A hit fails the session.

SECRET_PATTERN = re.compile(r"PRIVATE KEY|\bhvs\.[A-Za-z0-9_-]{20,}|\bs\.[A-Za-z0-9]{24}\b")
_known_secrets: set[str] = set()
_hits: list[str] = []
TEST_LOG_DIR = Path(tempfile.mkdtemp(prefix="vault-bridge-test-logs-"))
os.environ["VAULT_BRIDGE_TEST_LOG_DIR"] = str(TEST_LOG_DIR)


def register_secret(value: str) -> None:
    """A token or password the scan must never find in any output."""
    if value:
        _known_secrets.add(value)


def find_secrets(text: str) -> list[str]:
    found = [m.group(0)[:20] for m in SECRET_PATTERN.finditer(text)]
    found += [f"known secret {s[:4]}..." for s in _known_secrets if s in text]
    return found


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "secret_scan: part of the output scan")
    config.addinivalue_line(
        "markers", "fault(category): a case of the fault suite, counted in the fault summary"
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for title, content in report.sections:
        for hit in find_secrets(content):
            _hits.append(f"{report.nodeid} [{title}]: {hit}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for path in sorted(TEST_LOG_DIR.rglob("*")):
        if path.is_file():
            for hit in find_secrets(path.read_text(errors="replace")):
                _hits.append(f"{path.name}: {hit}")
    shutil.rmtree(TEST_LOG_DIR, ignore_errors=True)
    if _hits:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["SECRET SCAN FAILED: private keys or Vault tokens in test output:", *_hits[:20]]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ---------------------------------------------------------------------------
# Fault summary: tests marked ``@pytest.mark.fault("<category>")`` (the fault suite under
# tests/faults/, and the crash tests of the agent) are counted per category, and the session
# ends with one line such as ``faults: vault 9/9, cluster 14/14, crash 6/6, ...``.

FAULT_CATEGORIES = ("vault", "cluster", "crash", "state", "config")
_fault_results: dict[str, dict[str, bool]] = {}  # category -> nodeid -> passed


def _fault_category(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("fault")
    return str(marker.args[0]) if marker is not None and marker.args else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    category = _fault_category(item)
    if category is None or report.skipped:
        return  # a skipped case (its reason is reported) is neither passed nor failed
    results = _fault_results.setdefault(category, {})
    if report.when == "call" or (report.when == "setup" and not report.passed):
        results[item.nodeid] = report.passed


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _fault_results:
        return
    order = [c for c in FAULT_CATEGORIES if c in _fault_results]
    order += sorted(set(_fault_results) - set(order))
    parts = [f"{c} {sum(_fault_results[c].values())}/{len(_fault_results[c])}" for c in order]
    terminalreporter.write_line("faults: " + ", ".join(parts))
