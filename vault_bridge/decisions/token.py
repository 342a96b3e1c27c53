"""Pure: when the agent's own Vault token is renewed or replaced by a fresh login."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

# A token is renewed (or a new one obtained) once 2/3 of its TTL has passed.
RENEW_FRACTION = 2 / 3


TokenAction = Literal["none", "renew", "login"]


def renew_due_at(obtained_at: datetime, ttl_seconds: int) -> datetime:
    """When a token that had ``ttl_seconds`` left at ``obtained_at`` is due for renewal."""
    return obtained_at + timedelta(seconds=ttl_seconds * RENEW_FRACTION)


def token_action(
    *,
    now: datetime,
    obtained_at: datetime,
    ttl_seconds: int,
    renewable: bool,
    relogin_useful: bool = True,
) -> TokenAction:
    """What to do with a token that had ``ttl_seconds`` left at ``obtained_at``.

    Nothing before 2/3 of that TTL has passed; then renew it when renewable, else log in again
    (when that can give a fresh token: not for a fixed token that has not changed). An expired
    token is never renewed. A TTL of 0 means the token does not expire (a root token).
    """
    if ttl_seconds <= 0:
        return "none"
    elapsed = (now - obtained_at).total_seconds()
    if elapsed >= ttl_seconds:
        return "login"
    if now < renew_due_at(obtained_at, ttl_seconds):
        return "none"
    if renewable:
        return "renew"
    return "login" if relogin_useful else "none"
