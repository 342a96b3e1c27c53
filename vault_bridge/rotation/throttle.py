"""How many Vault requests a pass keeps in flight, and how it backs off when Vault pushes back.

:class:`VaultThrottle` bounds the signing and issuing requests in flight at once. A 429 (rate
limited) or a 5xx from Vault halves the bound and the request is retried after an exponential
backoff; each success raises the bound by one again, up to the pool's size. Connection errors
are not retried here: a Vault that is down fails the certificate at once and the agent's own
backoff takes over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from vault_bridge.errors import VaultError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def pushed_back(exc: VaultError) -> bool:
    """Whether Vault asked to slow down (429) or failed on its side (5xx)."""
    return exc.status is not None and (exc.status == 429 or 500 <= exc.status < 600)


class VaultThrottle:
    """A bound on concurrent Vault requests that shrinks under 429/5xx and grows back.

    ``sleep`` is injected so tests never wait.
    """

    def __init__(
        self,
        limit: int,
        *,
        sleep: Callable[[float], None],
        retries: int = 4,
        backoff: float = 0.25,
        max_delay: float = 4.0,
    ) -> None:
        self.ceiling = max(1, limit)
        self.limit = self.ceiling
        self.in_flight = 0
        self.peak = 0  # the most requests seen in flight at once
        self.pushbacks = 0  # 429/5xx answers seen
        self._sleep = sleep
        self._retries = retries
        self._backoff = backoff
        self._max_delay = max_delay
        self._cond = threading.Condition()

    def _enter(self) -> None:
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def _leave(self, *, ok: bool) -> None:
        with self._cond:
            self.in_flight -= 1
            if ok:
                self.limit = min(self.ceiling, self.limit + 1)
            else:
                self.pushbacks += 1
                self.limit = max(1, self.limit // 2)
            self._cond.notify_all()

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run the Vault request ``fn`` within the bound; retry it after 429/5xx."""
        attempt = 0
        while True:
            self._enter()
            try:
                result = fn()
            except VaultError as exc:
                slow = pushed_back(exc)
                self._leave(ok=not slow)
                if not slow or attempt >= self._retries:
                    raise
                delay = min(self._max_delay, self._backoff * (2**attempt))
                attempt += 1
                logger.warning(
                    "%s: %s; %d request(s) to Vault at once from now, retrying in %.2fs (%d/%d)",
                    what,
                    exc,
                    self.limit,
                    delay,
                    attempt,
                    self._retries,
                )
                self._sleep(delay)
                continue
            except BaseException:
                self._leave(ok=True)
                raise
            self._leave(ok=True)
            return result
