"""A replaced login certificate is revoked through the revocation queue after revoke_grace:
the one this process renewed away, and the one an earlier process held; never the one held.
Offline CA, a stub Vault port, an injected clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import OfflineCA, make_ca
from tests.fakes.world import make_settings
from vault_bridge.agent.revocation import queue_replaced_logins, revoke_due
from vault_bridge.config.settings import LoginSpec, Settings
from vault_bridge.rotation.login import LoginCertificate
from vault_bridge.state.journal import IntentJournal
from vault_bridge.state.store import StateDir

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEY = ("east", "login")
SPEC = LoginSpec(
    cluster="east",
    role="login",
    common_name="vault-bridge",
    alt_names=(),
    ip_sans=(),
    pki_mount="pki_login",
    mode="sign",
    key_type="ec",
    key_bits=256,
    ttl=timedelta(hours=1),
    renew_at=None,
    renew_before=timedelta(minutes=10),
)


class _Vault:
    """``sign`` from an offline CA (one-hour client certificates) and ``revoke`` recorded."""

    def __init__(self, ca: OfflineCA, clock: list[datetime]) -> None:
        self.ca = ca
        self.clock = clock
        self.revoked: list[tuple[str, str | None]] = []

    def ensure_token(self) -> None:
        return None

    def sign(self, mount: str, role: str, csr_pem: str, **kw: Any) -> dict[str, Any]:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        start = self.clock[0]
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.ca.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.ca.key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return {"certificate": pem, "ca_chain": [self.ca.pem]}

    def revoke(
        self, mount: str, *, serial: str | None = None, certificate: str | None = None
    ) -> None:
        self.revoked.append((mount, serial))


def _keeper(settings: Settings, clock: list[datetime]) -> IntentJournal:
    state_dir = StateDir(settings.agent.state_dir)
    state_dir.ensure()
    keeper = IntentJournal(state_dir, settings, clock=lambda: clock[0])
    keeper.load()
    return keeper


def _revoke(keeper: IntentJournal, vault: _Vault) -> None:
    revoke_due(
        keeper,
        vault,  # type: ignore[arg-type]
        enabled=True,
        rng=random.Random(1),
        blocked_for=timedelta(minutes=5),
    )


def test_a_renewed_login_certificate_is_revoked_after_the_grace_period(tmp_path: Path) -> None:
    clock = [NOW]
    vault = _Vault(make_ca("login CA"), clock)
    settings = make_settings(tmp_path / "state", agent={"revoke_grace": "2m"})
    keeper = _keeper(settings, clock)
    login = LoginCertificate(SPEC, vault, clock=lambda: clock[0])  # type: ignore[arg-type]
    first = login.current()
    queue_replaced_logins(keeper, [login], across_restarts=True)
    assert keeper.state is not None and keeper.state.superseded == []  # the held one: never
    assert keeper.state.record(KEY).serial == first.serial  # remembered for the next start
    clock[0] = NOW + timedelta(minutes=55)  # due: renewed at the next request
    second = login.current()
    assert second.serial != first.serial
    queue_replaced_logins(keeper, [login], across_restarts=True)
    [entry] = keeper.state.superseded
    assert (entry.name, entry.serial, entry.mount, entry.reason) == (
        "login",
        first.serial,
        "pki_login",
        "superseded",
    )
    assert entry.revoke_after == clock[0] + timedelta(minutes=2)
    assert entry.pem is not None and "PRIVATE" not in entry.pem
    assert keeper.state.record(KEY).serial == second.serial
    queue_replaced_logins(keeper, [login], across_restarts=True)
    assert len(keeper.state.superseded) == 1  # queued once
    _revoke(keeper, vault)
    assert vault.revoked == []  # a request in flight may still present it: the grace first
    clock[0] += timedelta(minutes=3)  # past the grace, before it expires
    _revoke(keeper, vault)
    assert vault.revoked == [("pki_login", first.serial)]
    assert keeper.state.superseded == []


def test_the_login_certificate_of_an_earlier_process_is_revoked(tmp_path: Path) -> None:
    clock = [NOW]
    vault = _Vault(make_ca("login CA"), clock)
    settings = make_settings(tmp_path / "state", agent={"revoke_grace": "1m"})
    keeper = _keeper(settings, clock)
    earlier = LoginCertificate(SPEC, vault, clock=lambda: clock[0])  # type: ignore[arg-type]
    old = earlier.current()
    queue_replaced_logins(keeper, [earlier], across_restarts=True)
    # the process stops; the next one (a new state load) logs in with a new certificate
    clock[0] += timedelta(minutes=5)
    keeper = _keeper(settings, clock)
    login = LoginCertificate(SPEC, vault, clock=lambda: clock[0])  # type: ignore[arg-type]
    queue_replaced_logins(keeper, [login], across_restarts=True)  # none held yet
    assert keeper.state is not None
    [entry] = keeper.state.superseded
    assert entry.serial == old.serial
    assert KEY not in keeper.state.certificates  # not queued twice
    queue_replaced_logins(keeper, [login], across_restarts=True)
    assert len(keeper.state.superseded) == 1
    held = login.current()
    queue_replaced_logins(keeper, [login], across_restarts=True)
    clock[0] += timedelta(minutes=2)  # past the grace
    _revoke(keeper, vault)
    assert vault.revoked == [("pki_login", old.serial)]
    assert keeper.state.record(KEY).serial == held.serial  # the held one: kept


def test_without_restart_memory_only_what_this_process_replaced(tmp_path: Path) -> None:
    clock = [NOW]
    vault = _Vault(make_ca("login CA"), clock)
    settings = make_settings(tmp_path / "state")
    keeper = _keeper(settings, clock)
    assert keeper.state is not None
    keeper.state.update(KEY, serial="aa:bb", mount="pki_login", not_after=NOW + timedelta(hours=1))
    login = LoginCertificate(SPEC, vault, clock=lambda: clock[0])  # type: ignore[arg-type]
    login.current()
    queue_replaced_logins(keeper, [login], across_restarts=False)
    assert keeper.state.superseded == []  # another replica's may be in use: left alone
