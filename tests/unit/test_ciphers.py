"""The 8.2 cipher check: which cipher strings accept an ECDSA certificate."""

from __future__ import annotations

import pytest

from vault_bridge.config.loading import parse_config
from vault_bridge.decisions.ciphers import allows_ecdsa
from vault_bridge.models.cluster import ClusterAccess
from vault_bridge.rotation.access_checks import accepted_logins, cipher_problems

RSA_ONLY = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"


@pytest.mark.parametrize(
    ("ciphers", "expected"),
    [
        (RSA_ONLY, False),
        ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_AES_256_GCM_SHA384", False),
        ("AES128-GCM-SHA256:DHE-RSA-AES256-SHA256", False),  # plain RSA key exchange
        ("aRSA:!aNULL:!ECDSA", False),  # '!' entries remove: they enable nothing
        (f"{RSA_ONLY}:ECDHE-ECDSA-AES128-GCM-SHA256", True),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", True),
        ("HIGH:!aNULL", None),  # a keyword: cannot be told here
        (f"{RSA_ONLY}:HIGH", None),
        ("", None),
        (None, None),
    ],
)
def test_allows_ecdsa(ciphers: str | None, expected: bool | None) -> None:
    assert allows_ecdsa(ciphers) is expected


def test_cluster_access_from_json_defaults() -> None:
    old = ClusterAccess.from_json({"name": "east"})
    assert old.basic_authentication and not old.mtls_certificate_authentication
    assert accepted_logins(old) == ["password (Basic)"]
    new = ClusterAccess.from_json(
        {
            "control_plane_basic_authentication": False,
            "mtls_certificate_authentication": True,
            "data_cipher_list": RSA_ONLY,
            "control_cipher_suites": 7,  # malformed: ignored, never trusted
        }
    )
    assert accepted_logins(new) == ["client certificate (mTLS)"]
    assert new.data_cipher_list == RSA_ONLY and new.control_cipher_suites is None


def test_cipher_problems_only_for_ec_keys_on_8_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW", "x")
    cert = {"role": "r", "common_name": "c"}
    settings = parse_config(
        {
            "vault": {"address": "https://v:8200"},
            "defaults": {"key_type": "ec", "key_bits": 256},
            "clusters": [
                {
                    "name": "east",
                    "url": "https://east:9443",
                    "username": "u",
                    "password_env": "PW",
                    "certificates": {
                        "proxy": cert,
                        "api": cert,
                        "syncer": cert,
                        "cm": {**cert, "key_type": "rsa", "key_bits": 2048},
                    },
                }
            ],
        }
    )
    cluster = settings.clusters[0]
    access = ClusterAccess(True, False, RSA_ONLY, RSA_ONLY)
    problems = cipher_problems(cluster, access, (8, 2, 0, 25))
    assert [p.split(":")[1].split()[0] for p in problems] == ["proxy", "api"]
    assert "data_cipher_list" in problems[0] and "control_cipher_suites" in problems[1]
    assert cipher_problems(cluster, access, (7, 22, 2, 14)) == []
