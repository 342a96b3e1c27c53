from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import OfflineCA
from vault_bridge.errors import CertificateError
from vault_bridge.models.certificates import CertName, IssuedCertificate, split_pem_chain
from vault_bridge.rotation.keys import (
    build_csr,
    check_before_install,
    generate_key,
    key_matches,
    key_to_pem,
)

NOW = datetime.now(UTC)
TTL = timedelta(hours=720)


def issued(ca: OfflineCA, **kw: object) -> IssuedCertificate:
    key_override = kw.pop("key_pem", None)
    cert, key = ca.leaf(**kw)  # type: ignore[arg-type]
    return IssuedCertificate.from_vault(
        {"certificate": cert, "ca_chain": [ca.pem]}, private_key=str(key_override or key)
    )


def test_a_good_certificate_passes(test_ca: OfflineCA) -> None:
    check_before_install(issued(test_ca, lifetime=TTL), CertName.PROXY, now=NOW, requested_ttl=TTL)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"not_before": NOW - timedelta(days=10), "lifetime": timedelta(days=1)},
            "already expired",
        ),
        ({"lifetime": timedelta(hours=10)}, "less than 10% of the requested TTL"),
        ({"ekus": (ExtendedKeyUsageOID.SERVER_AUTH,)}, "lacks the clientAuth extended key usage"),
        ({"ekus": ()}, "lacks the serverAuth and clientAuth"),
    ],
)
def test_unfit_certificates_are_refused(
    test_ca: OfflineCA, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(CertificateError, match=message):
        check_before_install(issued(test_ca, **kwargs), CertName.PROXY, now=NOW, requested_ttl=TTL)


def test_key_mismatch_is_refused(test_ca: OfflineCA) -> None:
    _, other = test_ca.leaf()
    with pytest.raises(CertificateError, match="does not match"):
        check_before_install(
            issued(test_ca, lifetime=TTL, key_pem=other), CertName.PROXY, now=NOW, requested_ttl=TTL
        )


def test_a_key_made_here_is_compared_without_loading_its_pem(
    test_ca: OfflineCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def no_reload(*args: object, **kwargs: object) -> object:
        raise AssertionError("a key made in this process is not loaded again")

    monkeypatch.setattr(serialization, "load_pem_private_key", no_reload)
    mine = ec.generate_private_key(ec.SECP256R1())
    cert, _ = test_ca.leaf(lifetime=TTL, key=mine)
    good = IssuedCertificate.from_vault(
        {"certificate": cert, "ca_chain": [test_ca.pem]}, private_key=key_to_pem(mine)
    )
    check_before_install(good, CertName.PROXY, now=NOW, requested_ttl=TTL, key=mine)
    # Vault answering with a certificate for another key is still caught.
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CertificateError, match="does not match"):
        check_before_install(good, CertName.PROXY, now=NOW, requested_ttl=TTL, key=other)


def test_internode_needs_rsa(test_ca: OfflineCA) -> None:
    with pytest.raises(CertificateError, match="needs an RSA key"):
        check_before_install(
            issued(test_ca, lifetime=TTL), CertName.CCS_INTERNODE, now=NOW, requested_ttl=TTL
        )


@pytest.mark.parametrize(
    ("key_type", "bits", "header"),
    [("rsa", 2048, "RSA PRIVATE KEY"), ("ec", 384, "EC PRIVATE KEY")],
)
def test_keys_and_csr(key_type: str, bits: int, header: str) -> None:
    from cryptography import x509

    key = generate_key(key_type, bits)  # type: ignore[arg-type]
    pem = key_to_pem(key)
    assert f"BEGIN {header}" in pem
    csr = x509.load_pem_x509_csr(
        build_csr(key, "a.example.com", ("b.example.com",), ("127.0.0.1",)).encode()
    )
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["b.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert csr.is_signature_valid


def test_chain_leaves_out_self_signed_root(test_ca: OfflineCA) -> None:
    cert = issued(test_ca, lifetime=TTL)
    assert split_pem_chain(cert.chain_pem) == [cert.certificate.strip() + "\n"]
    assert "private_key" not in repr(cert)
    assert key_matches(cert.certificate, cert.private_key)
