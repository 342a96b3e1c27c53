"""The pure parts of the Vault adapter: the token decision and the role parsing."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

import pytest
import requests

from vault_bridge.adapters.vault.client import (
    PkiRole,
    TokenAuth,
    VaultClient,
    _is_cert_verification_error,
    token_action,
)
from vault_bridge.decisions.token import renew_due_at

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("elapsed", "ttl", "renewable", "relogin_useful", "expected"),
    [
        (0, 3600, True, True, "none"),
        (2399, 3600, True, True, "none"),  # just before 2/3
        (2400, 3600, True, True, "renew"),  # at 2/3
        (2400, 3600, False, True, "login"),  # not renewable: a fresh login
        (2400, 3600, False, False, "none"),  # fixed token, unchanged: nothing better to do
        (3599, 3600, True, True, "renew"),
        (3600, 3600, True, True, "login"),  # expired: renewing is pointless
        (3600, 3600, False, False, "login"),  # expired fixed token: re-read it (clear error)
        (10**6, 0, False, True, "none"),  # ttl 0: never expires (root token)
        (3, 4, True, True, "renew"),
        (2, 4, True, True, "none"),
    ],
)
def test_token_action(
    elapsed: int, ttl: int, renewable: bool, relogin_useful: bool, expected: str
) -> None:
    assert (
        token_action(
            now=T0 + timedelta(seconds=elapsed),
            obtained_at=T0,
            ttl_seconds=ttl,
            renewable=renewable,
            relogin_useful=relogin_useful,
        )
        == expected
    )


def test_pki_role_from_vault_accepts_comma_separated_domains() -> None:
    role = PkiRole.from_vault(
        "pki",
        "r",
        {"allowed_domains": "a.example.com,b.example.com", "max_ttl": 60, "key_type": "ec"},
    )
    assert role.allowed_domains == ("a.example.com", "b.example.com")
    assert (role.key_type, role.max_ttl_seconds) == ("ec", 60)


def test_cert_verification_error_is_found_in_the_chain() -> None:
    inner = ssl.SSLCertVerificationError(1, "certificate verify failed")
    outer = requests.exceptions.SSLError(inner)
    assert _is_cert_verification_error(outer)
    assert not _is_cert_verification_error(requests.exceptions.SSLError("EOF in handshake"))


def test_client_repr_and_unused_client_hold_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "s.secret-token-value")
    with VaultClient("https://vault.example.com:8200/", auth=TokenAuth()) as client:
        assert client.address == "https://vault.example.com:8200"
        assert "secret-token-value" not in repr(client)
        assert client.token_expires_at is None and client.request_count == 0
        # hvac would read $VAULT_TOKEN on its own; we only read it at login.
        assert not client._hvac.token


@pytest.mark.parametrize("ttl", [4, 60, 3600, 86400])
def test_the_agent_wakes_for_the_token_when_token_action_says_renew(ttl: int) -> None:
    due = renew_due_at(T0, ttl)
    assert due == T0 + timedelta(seconds=ttl * 2 / 3)
    before = due - timedelta(milliseconds=1)
    for now, expected in ((before, "none"), (due, "renew")):
        assert token_action(now=now, obtained_at=T0, ttl_seconds=ttl, renewable=True) == expected
