"""The suite-wide secret scan (tests/conftest.py) finds what it must."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import find_secrets, make_ca, register_secret
from vault_bridge.cli.logs import ScrubFilter, scrub


def test_scan_finds_keys_and_tokens() -> None:
    _, key = make_ca().leaf()
    assert find_secrets(f"oops {key}")
    assert find_secrets("token hvs.CAESIJ0123456789abcdefghijklmnop")
    register_secret("my-test-password-123")
    assert find_secrets("pw=my-test-password-123")
    assert not find_secrets("serial 01:02:03, not_after 2026-01-01")


def test_log_filter_scrubs_what_slips_through(caplog: pytest.LogCaptureFixture) -> None:
    _, key = make_ca().leaf()
    logger = logging.getLogger("vault_bridge.test")
    record = logger.makeRecord("x", logging.ERROR, __file__, 1, "body %s", (key,), None)
    ScrubFilter().filter(record)
    assert "PRIVATE KEY" not in record.getMessage()
    assert "[REDACTED]" in record.getMessage()
    assert scrub("hvs.CAESIJ0123456789abcdefghijklmnop") == "[REDACTED]"
