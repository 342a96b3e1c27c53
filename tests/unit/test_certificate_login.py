"""Certificate login and mtls_trusted_ca: the pure decisions, the configuration keys and the
login certificate's renewal (with an in-process stand-in for Vault's sign endpoint)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import OfflineCA, make_ca
from vault_bridge.config.loading import parse_config
from vault_bridge.config.settings import LoginSpec
from vault_bridge.decisions.login import login_renewal_time, login_replacement
from vault_bridge.decisions.trusted_ca import plan_trusted_ca
from vault_bridge.errors import ConfigError, VaultUnavailableError
from vault_bridge.models.certificates import CertificateInfo
from vault_bridge.rotation.login import LoginCertificate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CLIENT = (ExtendedKeyUsageOID.CLIENT_AUTH,)


@pytest.fixture(scope="module")
def old() -> OfflineCA:
    return make_ca("Old Client CA")


@pytest.fixture(scope="module")
def new() -> OfflineCA:
    return make_ca("New Client CA")


# ---------------------------------------------------------------- mtls_trusted_ca


def test_trusted_ca_takes_every_issuer_of_the_mount(old: OfflineCA, new: OfflineCA) -> None:
    plan = plan_trusted_ca([old.pem, new.pem, old.pem], None)
    assert plan.change and plan.pems == (old.pem, new.pem)  # each once, in mount order
    again = plan_trusted_ca([new.pem, old.pem], plan.bundle)
    assert not again.change  # the same set in another order is no change


def test_trusted_ca_keeps_a_ca_the_login_in_use_needs(old: OfflineCA, new: OfflineCA) -> None:
    installed = old.pem + new.pem
    leaf, _ = old.leaf("vault-bridge", ekus=CLIENT)
    plan = plan_trusted_ca([new.pem], installed, in_use=[leaf])
    assert not plan.change and plan.kept == (old.pem,)
    moved, _ = new.leaf("vault-bridge", ekus=CLIENT)
    plan = plan_trusted_ca([new.pem], installed, in_use=[moved])
    assert plan.change and plan.pems == (new.pem,)  # nothing in use needs the old one


def test_trusted_ca_never_empty() -> None:
    with pytest.raises(ValueError, match="no CA certificate"):
        plan_trusted_ca([], None)


# ---------------------------------------------------------------- the login certificate

SPEC = LoginSpec(
    cluster="east",
    role="login",
    common_name="vault-bridge",
    alt_names=(),
    ip_sans=(),
    pki_mount="pki",
    mode="sign",
    key_type="ec",
    key_bits=256,
    ttl=timedelta(hours=1),
    renew_at=None,
    renew_before=timedelta(minutes=10),
)


def _issuer(ca: OfflineCA) -> list[x509.Certificate]:
    return [ca.cert]


def test_login_replacement_reasons(old: OfflineCA, new: OfflineCA) -> None:
    leaf, _ = old.leaf("vault-bridge", not_before=NOW, lifetime=timedelta(hours=1), ekus=CLIENT)
    info = CertificateInfo.from_pem(leaf)
    due = login_renewal_time(SPEC, info)
    assert NOW + timedelta(minutes=47) <= due <= NOW + timedelta(minutes=50)  # minus jitter
    assert login_replacement(SPEC, None, now=NOW) == "none held"
    assert login_replacement(SPEC, leaf, now=NOW) is None
    assert login_replacement(SPEC, leaf, now=NOW, default_issuer=_issuer(old)) is None
    moved = login_replacement(SPEC, leaf, now=NOW, default_issuer=_issuer(new))
    assert moved == "the mount's default issuer changed"
    assert login_replacement(SPEC, leaf, now=due) == "due"
    assert login_replacement(SPEC, leaf, now=NOW + timedelta(hours=2)) == "expired"


class _Vault:
    """Signs CSRs with an offline CA, like ``<mount>/sign/<role>``; can be made to fail."""

    def __init__(self, ca: OfflineCA, clock: list[datetime]) -> None:
        self.ca = ca
        self.clock = clock
        self.fail = False
        self.signed = 0

    def ensure_token(self) -> None:
        return None

    def sign(self, mount: str, role: str, csr_pem: str, **kw: Any) -> dict[str, Any]:
        if self.fail:
            raise VaultUnavailableError("Vault is sealed")
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
            .add_extension(x509.ExtendedKeyUsage(list(CLIENT)), critical=False)
            .sign(self.ca.key, hashes.SHA256())
        )
        self.signed += 1
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return {"certificate": pem, "ca_chain": [self.ca.pem]}


def test_login_certificate_renews_when_due_and_rides_out_a_vault_outage(old: OfflineCA) -> None:
    clock = [NOW]
    vault = _Vault(old, clock)
    login = LoginCertificate(SPEC, vault, clock=lambda: clock[0])  # type: ignore[arg-type]
    first = login.current()
    assert login.current() is first and vault.signed == 1  # not due: no new request to Vault
    assert first.info.subject == "CN=vault-bridge"
    clock[0] = NOW + timedelta(minutes=55)  # due (renew_before 10m), still valid
    vault.fail = True
    assert login.current() is first  # Vault down: the valid one goes on being used
    vault.fail = False
    clock[0] += timedelta(seconds=31)  # past the retry wait
    second = login.current()
    assert second.serial != first.serial and vault.signed == 2
    clock[0] = NOW + timedelta(hours=3)  # the held one expired and Vault is down: an error
    vault.fail = True
    with pytest.raises(VaultUnavailableError):
        login.current()


def test_login_certificate_follows_the_new_default_issuer(old: OfflineCA, new: OfflineCA) -> None:
    clock = [NOW]
    vault = _Vault(old, clock)
    login = LoginCertificate(SPEC, vault, clock=lambda: clock[0])  # type: ignore[arg-type]
    first = login.current()
    vault.ca = new
    login.follow_issuer(_issuer(old))  # the default issuer did not move: kept
    assert login.current() is first
    login.follow_issuer(_issuer(new))
    moved = login.current()
    assert moved.info.issuer == new.cert.subject.rfc4514_string()
    assert login.current() is moved


# ---------------------------------------------------------------- configuration

LOGIN = {"role": "login", "common_name": "vault-bridge"}
BASE = {"name": "east", "url": "https://east:9443"}


def _parse(**cluster: Any) -> Any:
    return parse_config({"vault": {"address": "https://v:8200"}, "clusters": [{**BASE, **cluster}]})


def test_certificate_login_config_resolves() -> None:
    settings = _parse(
        login="certificate",
        login_certificate={**LOGIN, "ttl": "1h", "renew_before": "10m"},
        certificates={
            "mtls_trusted_ca": {"pki_mount": "pki_clients/"},
            "proxy": {"role": "r", "common_name": "p"},
        },
    )
    cluster = settings.clusters[0]
    assert cluster.login == "certificate" and cluster.password is None
    assert cluster.login_certificate is not None
    assert cluster.login_certificate.renew_before == timedelta(minutes=10)
    assert cluster.trusted_ca_mount == "pki_clients"
    assert [s.name.value for s in cluster.certificates] == ["proxy"]


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        (
            {"login": "certificate"},
            "clusters[0]: missing key 'login_certificate': required when login = 'certificate'",
        ),
        (
            {"login": "certificate", "login_certificate": LOGIN, "password_env": "X"},
            "clusters[0]: key 'password_env' does not apply when login = 'certificate'",
        ),
        (
            {"login": "certificate", "login_certificate": LOGIN, "username": "a"},
            "clusters[0]: key 'username' does not apply",
        ),
        (
            {"login": "certificat", "login_certificate": LOGIN},
            "clusters[0].login: Input should be 'password' or 'certificate'",
        ),
        (
            {"login": "certificate", "login_certificate": {"role": "x"}},
            "clusters[0].login_certificate.common_name: missing required key",
        ),
        (
            {"username": "a", "password_env": "HOME", "login_certificate": LOGIN},
            "clusters[0]: key 'login_certificate' applies only when login = 'certificate'",
        ),
        ({"password_env": "HOME"}, "clusters[0].username: missing required key"),
        (
            {
                "username": "a",
                "password_env": "HOME",
                "certificates": {"mtls_trusted_ca": {"role": "r"}},
            },
            "clusters[0].certificates.mtls_trusted_ca.role: unknown key",
        ),
        (
            {
                "username": "a",
                "password_env": "HOME",
                "certificates": {"mtls_trusted_ca": {"pki_mont": "p"}},
            },
            "clusters[0].certificates.mtls_trusted_ca.pki_mont: unknown key (did you mean 'pki_mount'?)",
        ),
    ],
)
def test_certificate_login_config_errors(cluster: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(**cluster)
    assert str(err.value).startswith(message)


def test_login_renewal_retry_waits_after_a_failure(old: OfflineCA) -> None:
    clock = [NOW]
    vault = _Vault(old, clock)
    login = LoginCertificate(SPEC, vault, clock=lambda: clock[0])  # type: ignore[arg-type]
    first = login.current()
    assert login.next_attempt == login.renew_at
    clock[0] = NOW + timedelta(minutes=55)
    vault.fail = True
    assert login.current() is first and vault.signed == 1
    assert login.next_attempt == clock[0] + timedelta(seconds=30)  # no busy loop
    vault.fail = False
    assert login.current() is first  # within the retry wait: Vault is not asked again
    clock[0] += timedelta(seconds=31)
    assert login.current() is not first and vault.signed == 2
