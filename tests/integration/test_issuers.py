"""Vault PKI's own lifecycle against a real OpenBao: multi-issuer mounts, intermediate and root
rotation, issuer choice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from vault_bridge_lab.lab import ROTATED, cluster_table, lab_config
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup, rotate_intermediate, setup_pki
from vault_bridge_lab.simulator import SimulatedCluster

from tests.integration.conftest import PKI_ROLES
from tests.integration.test_policy import limited_token
from vault_bridge.adapters.tls_probe import verify_chain
from vault_bridge.adapters.vault.client import TokenAuth, VaultClient
from vault_bridge.config.loading import parse_config
from vault_bridge.decisions.policy import policy_rules
from vault_bridge.errors import VaultError, VerificationError
from vault_bridge.models.certificates import CertificateInfo
from vault_bridge.rotation.app import App, build
from vault_bridge.rotation.connect_checks import connect_checks, issuer_warnings
from vault_bridge.rotation.keys import build_csr, generate_key

pytestmark = pytest.mark.usefixtures("lab_env")


@pytest.fixture
def fresh_pki(openbao: OpenBaoServer) -> PkiSetup:
    """Mounts of this test alone: a rotation must not leak into other tests."""
    suffix = uuid.uuid4().hex[:8]
    return setup_pki(
        openbao.client(), mount=f"root-{suffix}", int_mount=f"int-{suffix}", roles=PKI_ROLES
    )


def vault_client(openbao: OpenBaoServer) -> VaultClient:
    client = VaultClient(openbao.address, auth=TokenAuth(), ca_cert=openbao.ca_cert)
    client.login()
    return client


def test_mount_issuers_lists_every_issuer_and_the_default(
    openbao: OpenBaoServer, fresh_pki: PkiSetup
) -> None:
    mount = fresh_pki.issuing_mount
    with vault_client(openbao) as vault:
        before = vault.mount_issuers(mount)
        first = before.default
        assert (
            first is not None
            and first.certificate.strip() == (fresh_pki.intermediate_pem or "").strip()
        )
        rotated = rotate_intermediate(openbao.client(), fresh_pki)
        after = vault.mount_issuers(mount)
    ids = {i.issuer_id for i in after.issuers}
    assert {first.issuer_id, rotated.issuer_id} <= ids
    assert after.default_id == rotated.issuer_id
    default = after.default
    assert default is not None and default.certificate.strip() == rotated.intermediate_pem.strip()
    # both intermediates and the root are in the trust the mount gives
    trusted = {x509.load_pem_x509_certificate(p.encode()).subject for p in after.chains()}
    root = x509.load_pem_x509_certificate(fresh_pki.root_pem.encode())
    assert root.subject in trusted and len(after.chains()) >= 3


def test_sign_and_issue_through_a_chosen_issuer(
    openbao: OpenBaoServer, fresh_pki: PkiSetup
) -> None:
    mount = fresh_pki.issuing_mount
    with vault_client(openbao) as vault:
        old = vault.mount_issuers(mount).default
        assert old is not None
        rotate_intermediate(openbao.client(), fresh_pki)  # the new one is the default now
        key = generate_key("ec", 256)
        csr = build_csr(key, "a.example.com", (), ())
        data = vault.sign(
            mount, "redis", csr, common_name="a.example.com", ttl="24h", issuer_ref=old.issuer_id
        )
        leaf = x509.load_pem_x509_certificate(str(data["certificate"]).encode())
        leaf.verify_directly_issued_by(old.x509())
        issued = vault.issue(
            mount, "redis-ec", common_name="b.example.com", ttl="24h", issuer_ref=old.issuer_id
        )
        x509.load_pem_x509_certificate(issued.certificate.encode()).verify_directly_issued_by(
            old.x509()
        )
        with pytest.raises(VaultError, match="no-such-issuer"):
            vault.issuer(mount, "no-such-issuer")
        detail = vault.read_issuer(mount, old.issuer_id)
    assert detail.can_issue is True and detail.revoked is False


# -- the pass through a CA rotation ----------------------------------------------------------


class Clock:
    """An injected clock: real time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def lifecycle_app(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    clock: Clock,
    *,
    names: tuple[str, ...] = ROTATED,
    defaults: dict[str, Any] | None = None,
) -> App:
    doc = lab_config(
        openbao,
        pki,
        [cluster_table(sim, tmp_path, role="redis", names=names)],
        state_dir=tmp_path / "state",
        defaults={"key_type": "ec", "key_bits": 256, "ttl": "720h", **(defaults or {})},
    )
    return build(parse_config(doc), clock=clock, sleep=lambda s: None)


def signed_by(pem: str, ca_pem: str) -> bool:
    leaf = x509.load_pem_x509_certificate(pem.encode())
    try:
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem.encode()))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def test_new_default_intermediate_keeps_old_certificates_ok_until_renewal(
    openbao: OpenBaoServer, fresh_pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    clock = Clock()
    with lifecycle_app(openbao, fresh_pki, sim, tmp_path, clock) as app:
        assert app.rotator.run_once().ok
        old_int = fresh_pki.intermediate_pem or ""
        rotated = rotate_intermediate(openbao.client(), fresh_pki)
        installs = sim.install_count
        status = app.rotator.status()
        assert {s.state for s in status.statuses} == {"ok"}, status.statuses
        for s in status.statuses:
            assert any("not the mount's default" in w for w in s.warnings), s.warnings
        result = app.rotator.run_once()
        assert result.ok and result.outcomes == [] and sim.install_count == installs
        for name in ROTATED:
            assert signed_by(sim.installed_pem(name), old_int)
        # at the renewal time, each moves to the new default issuer
        latest = max(s.renew_at for s in status.statuses if s.renew_at)
        clock.offset = latest - datetime.now(UTC) + timedelta(minutes=1)
        result = app.rotator.run_once()
        assert result.ok, result.summary()
        assert sorted(o.name for o in result.outcomes) == sorted(ROTATED)
        for name in ROTATED:
            assert signed_by(sim.installed_pem(name), rotated.intermediate_pem)
        for endpoint in ("api", "cm", "metrics_exporter", "proxy"):
            verify_chain(sim.endpoint(endpoint), fresh_pki.root_pem)
        assert {s.warnings for s in app.rotator.status().statuses} == {()}


def test_issuer_migration_spreads_the_move_over_the_window(
    openbao: OpenBaoServer, fresh_pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    clock = Clock()
    with lifecycle_app(
        openbao, fresh_pki, sim, tmp_path, clock, defaults={"issuer_migration": "72h"}
    ) as app:
        assert app.rotator.run_once().ok
        rotated = rotate_intermediate(openbao.client(), fresh_pki)
        seen = clock()
        statuses = app.rotator.status().statuses  # the new default is first seen here
        times = sorted(s.renew_at for s in statuses if s.renew_at)
        assert len(times) == len(ROTATED) and len(set(times)) == len(ROTATED)  # spread
        assert all(seen - timedelta(seconds=5) <= t <= seen + timedelta(hours=72) for t in times)
        # half way through the window only those whose turn came move
        clock.offset = times[2] - datetime.now(UTC) + timedelta(seconds=1)
        first = app.rotator.run_once()
        assert first.ok and len(first.outcomes) == 3, first.summary()
        clock.offset = timedelta(hours=72, minutes=1)
        rest = app.rotator.run_once()
        assert rest.ok and len(rest.outcomes) == 2, rest.summary()
        for name in ROTATED:
            assert signed_by(sim.installed_pem(name), rotated.intermediate_pem)


def test_root_rotation_with_api_managed_never_locks_out(
    openbao: OpenBaoServer, fresh_pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    clock = Clock()
    with lifecycle_app(openbao, fresh_pki, sim, tmp_path, clock) as app:
        assert app.rotator.run_once().ok
    verify_chain(sim.endpoint("api"), fresh_pki.root_pem)
    rotated = rotate_intermediate(openbao.client(), fresh_pki, new_root=True)
    assert rotated.root_pem.strip() != fresh_pki.root_pem.strip()
    # a fresh start with the same configuration: the served api chains to the old root
    with lifecycle_app(openbao, fresh_pki, sim, tmp_path, clock) as app:
        status = app.rotator.status()
        assert not status.cluster_errors and {s.state for s in status.statuses} == {"ok"}
        result = app.rotator.run_once(force=[("east", "api")], only={("east", "api")})
        assert result.ok, result.summary()
    verify_chain(sim.endpoint("api"), rotated.root_pem)
    with pytest.raises(VerificationError):
        verify_chain(sim.endpoint("api"), fresh_pki.root_pem)
    # and again from scratch: the api now chains to the new root, still trusted
    with lifecycle_app(openbao, fresh_pki, sim, tmp_path, clock) as app:
        status = app.rotator.status()
        assert not status.cluster_errors, status.cluster_errors
        states = {s.name: s.state for s in status.statuses}
        assert set(states.values()) == {"ok"}


def test_issuer_ref_chooses_the_issuer_and_the_policy_grants_it(
    openbao: OpenBaoServer, fresh_pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    mount = fresh_pki.issuing_mount
    old_int = fresh_pki.intermediate_pem or ""
    with vault_client(openbao) as vault:
        old = vault.mount_issuers(mount).default
    assert old is not None
    openbao.client().adapter.post(
        f"/v1/{mount}/issuer/{old.issuer_id}", json={"issuer_name": "int-old"}
    )
    rotate_intermediate(openbao.client(), fresh_pki)  # a new default the config does not want
    clock = Clock()
    with lifecycle_app(
        openbao,
        fresh_pki,
        sim,
        tmp_path,
        clock,
        names=("proxy",),
        defaults={"issuer_ref": "int-old"},
    ) as app:
        assert connect_checks(app) == []
        result = app.rotator.run_once()
        assert result.ok, result.summary()
        assert signed_by(sim.installed_pem("proxy"), old_int)
        paths = [r.path for r in policy_rules(app.settings)]
        assert f"{mount}/issuer/int-old/sign/redis" in paths
        assert f"{mount}/sign/redis" not in paths
        assert f"{mount}/issuer/int-old" in paths
        (status,) = app.rotator.status().statuses
        assert status.state == "ok" and status.warnings == ()
    with lifecycle_app(
        openbao, fresh_pki, sim, tmp_path, clock, names=("proxy",), defaults={"issuer_ref": "nope"}
    ) as app:
        problems = connect_checks(app)
    assert any("issuer_ref 'nope'" in p and "no such issuer" in p for p in problems), problems


def test_issuer_expiring_sooner_than_a_lifetime_is_warned(
    openbao: OpenBaoServer, fresh_pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    clock = Clock()
    with lifecycle_app(openbao, fresh_pki, sim, tmp_path, clock, names=("proxy",)) as app:
        assert app.rotator.run_once().ok
        rotate_intermediate(openbao.client(), fresh_pki, ttl="500h")  # shorter than 720h
        (status,) = app.rotator.status().statuses
        assert status.issuer_expiring
        assert any("sooner than one lifetime (720h)" in w for w in status.warnings)
        warnings = issuer_warnings(app)
    assert any(w.startswith("proxy on east: issuer ") and "expires" in w for w in warnings)


def test_the_generated_policy_is_enough_for_issuer_ref(
    openbao: OpenBaoServer,
    fresh_pki: PkiSetup,
    sim: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token holding only `vault-bridge policy`'s output: the issuers are listed and read,
    revocation looked up, the chosen issuer signs and validate --connect reads it."""
    mount = fresh_pki.issuing_mount
    with vault_client(openbao) as vault:
        old = vault.mount_issuers(mount).default
    assert old is not None
    rotate_intermediate(openbao.client(), fresh_pki)
    clock = Clock()
    doc_defaults = {"issuer_ref": old.issuer_id}
    with lifecycle_app(
        openbao, fresh_pki, sim, tmp_path, clock, names=("proxy",), defaults=doc_defaults
    ) as app:
        settings = app.settings
    monkeypatch.setenv("VAULT_TOKEN", limited_token(openbao, settings))
    with build(settings, clock=clock, sleep=lambda s: None) as app:
        assert connect_checks(app) == []
        result = app.rotator.run_once()
        assert result.ok, result.summary()
        (status,) = app.rotator.status().statuses
    assert status.state == "ok" and status.signed_by == old.issuer_id
    assert signed_by(sim.installed_pem("proxy"), fresh_pki.intermediate_pem or "")


def test_validate_connect_refuses_a_default_issuer_without_key(
    openbao: OpenBaoServer, fresh_pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    mount = fresh_pki.issuing_mount
    with vault_client(openbao) as vault:
        keyless = next(e for e in vault.list_issuers(mount) if not e.has_key)  # the root copy
    clock = Clock()
    with lifecycle_app(openbao, fresh_pki, sim, tmp_path, clock, names=("proxy",)) as app:
        assert connect_checks(app) == []
        openbao.client().adapter.post(
            f"/v1/{mount}/config/issuers", json={"default": keyless.issuer_id}
        )
        problems = connect_checks(app)
    assert any("has no key and cannot issue" in p for p in problems), problems


def test_a_certificate_revoked_in_vault_is_replaced(
    openbao: OpenBaoServer, fresh_pki: PkiSetup, sim: SimulatedCluster, tmp_path: Path
) -> None:
    clock = Clock()
    with lifecycle_app(openbao, fresh_pki, sim, tmp_path, clock, names=("proxy", "cm")) as app:
        assert app.rotator.run_once().ok
        serial = CertificateInfo.from_pem(sim.installed_pem("proxy")).serial
        openbao.client().secrets.pki.revoke_certificate(serial, mount_point=fresh_pki.issuing_mount)
        states = {s.name: s.state for s in app.rotator.status().statuses}
        assert states == {"proxy": "revoked", "cm": "ok"}
        result = app.rotator.run_once()
        assert result.ok and [o.name for o in result.outcomes] == ["proxy"], result.summary()
        assert {s.state for s in app.rotator.status().statuses} == {"ok"}
