"""The checks of single configuration values (durations, windows, issuer refs, DNS names, IP
addresses, host:port) shared by the schema's models.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
)
from pydantic_core import PydanticCustomError

from vault_bridge.config.durations import parse_duration
from vault_bridge.config.windows import parse_windows


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


def _check_windows(value: str | list[str] | None) -> str | list[str] | None:
    if value is not None:
        parse_windows(value)
    return value


def _check_issuer_ref(value: str | None) -> str | None:
    if value is not None and (not value.strip() or "/" in value or value != value.strip()):
        raise ValueError(
            f"expected an issuer ID or name of the mount (no '/', no spaces), got {value!r}"
        )
    return value


def _to_timedelta(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return parse_duration(value)


# A duration key: written as Vault writes them ("10m", "1h"), held as a timedelta once loaded,
# so nothing parses a duration from the configuration at run time.
Duration = Annotated[timedelta, BeforeValidator(_to_timedelta)]


# RFC 1123 labels; "_" is allowed too, as service names and some internal zones use it.
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def check_dns_name(value: str, *, wildcard: bool = True) -> str:
    """A DNS name (RFC 1123 labels; a leading ``*.`` when ``wildcard``); ValueError if not."""
    name = value[2:] if wildcard and value.startswith("*.") else value
    name = name.removesuffix(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(p) for p in name.split(".")):
        raise ValueError(f"expected a DNS name such as re-east.example.com, got {value!r}")
    return value


def check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"expected an IP address such as 10.0.0.5, got {value!r}") from None
    return value


def parse_hostport(value: str, default_port: int | None) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"expected host:port, got {value!r}")
        return value, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port 1-65535, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class VaultSecretRef:
    """A value in Vault's KV version 2 engine: ``<mount>/<path>#<key>``."""

    mount: str
    path: str
    key: str

    @classmethod
    def parse(cls, text: str) -> VaultSecretRef:
        location, sep, key = text.partition("#")
        mount, slash, path = location.strip("/").partition("/")
        if not sep or not key or not slash or not mount or not path:
            raise ValueError(
                f"expected '<kv-v2 mount>/<path>#<key>' such as 'secret/redis/re-east#password', "
                f"got {text!r}"
            )
        return cls(mount, path, key)

    @property
    def api_path(self) -> str:
        """The KV v2 read path: ``<mount>/data/<path>``."""
        return f"{self.mount}/data/{self.path}"
