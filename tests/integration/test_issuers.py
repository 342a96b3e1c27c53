"""Vault PKI's own lifecycle against a real OpenBao: multi-issuer mounts, intermediate and root
rotation, issuer choice."""

from __future__ import annotations

import uuid

import pytest
from cryptography import x509
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup, rotate_intermediate, setup_pki

from tests.integration.conftest import PKI_ROLES
from vault_bridge.adapters.vault.client import TokenAuth, VaultClient
from vault_bridge.errors import VaultError
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
