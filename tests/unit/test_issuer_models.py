"""Typed issuer values from Vault's answers, hostile ones included."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import OfflineCA, make_ca
from vault_bridge.models.vault import IssuerEntry, MountIssuers, PkiIssuer


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {
                "keys": ["a", "b"],
                "key_info": {
                    "a": {"is_default": True, "issuer_name": "int-2026", "key_id": "k"},
                    "b": {"is_default": False, "issuer_name": "", "key_id": ""},
                },
            },
            [("a", "int-2026", True, True), ("b", "", False, False)],
        ),
        ({"keys": ["a"]}, [("a", "", False, False)]),  # no key_info: nothing is assumed
        ({"keys": ["a", 7, None, ""], "key_info": "junk"}, [("a", "", False, False)]),
        ({"keys": "a,b"}, []),
        ({}, []),
        ({"keys": ["a"], "key_info": {"a": {"is_default": "yes"}}}, [("a", "", False, False)]),
    ],
)
def test_issuer_list(data: dict[str, Any], expected: list[tuple[str, str, bool, bool]]) -> None:
    entries = IssuerEntry.list_from_vault(data)
    assert [(e.issuer_id, e.name, e.is_default, e.has_key) for e in entries] == expected


def test_issuer_from_vault_and_the_mount(test_ca: OfflineCA) -> None:
    root = make_ca("Root")
    full = PkiIssuer.from_vault(
        "pki",
        {
            "certificate": test_ca.pem,
            "issuer_id": "id-1",
            "issuer_name": "int",
            "usage": "crl-signing,issuing-certificates",
            "revoked": False,
        },
        [test_ca.pem, root.pem],
    )
    assert (full.ref, full.can_issue, full.revoked) == ("int", True, False)
    bare = PkiIssuer.from_vault("pki", {"certificate": root.pem, "issuer_id": "id-2"}, [])
    assert bare.ref == "id-2" and bare.can_issue is None and bare.ca_chain == (root.pem,)
    revoked = PkiIssuer.from_vault(
        "pki",
        {
            "certificate": root.pem,
            "issuer_id": "x",
            "usage": ["issuing-certificates"],
            "revoked": True,
        },
        [],
    )
    assert revoked.can_issue is False
    mount = MountIssuers("pki", (full, bare), "id-1")
    assert mount.default is full and mount.find("default") is full
    assert mount.find("int") is full and mount.find("id-2") is bare and mount.find("?") is None
    assert mount.chains() == [test_ca.pem, root.pem]  # each PEM once
    assert MountIssuers("pki", (full,), None).default is None


@pytest.mark.parametrize("certificate", ["", "not a pem", None])
def test_issuer_without_a_certificate_is_refused(certificate: Any) -> None:
    with pytest.raises(ValueError):
        PkiIssuer.from_vault("pki", {"certificate": certificate, "issuer_id": "a"}, [])
