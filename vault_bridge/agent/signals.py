"""The agent's signals: they only set flags and wake the loop, never do work in a handler.

- SIGHUP: reload the configuration (the agent reads :meth:`Signals.take` at its next step);
- SIGUSR1: a CLI request is waiting in the state directory;
- SIGTERM / SIGINT: :attr:`Signals.stopping` is set, the step in progress finishes, and a
  watchdog exits the process with 1 if that takes longer than ``stop_grace``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

logger = logging.getLogger(__name__)


class Signals:
    """The flags the signal handling sets, and the event that wakes the agent's loop."""

    def __init__(self, stop_grace: Callable[[], timedelta]) -> None:
        self._stop_grace = stop_grace
        self._wake = threading.Event()
        self._mutex = threading.Lock()
        self._signals: set[int] = set()
        self.stopping = False
        self._watchdog: threading.Timer | None = None

    def take(self) -> set[int]:
        """The signals received since the last call."""
        with self._mutex:
            signals, self._signals = self._signals, set()
        return signals

    def sleep(self, timeout: float) -> None:
        """Wait ``timeout`` seconds, or less when a signal arrives."""
        if self._wake.wait(timeout):
            self._wake.clear()

    def cancel_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Signal handlers only let the C handler write the signal number to a socket; a
        thread reads it, sets the flags and wakes the loop (no lock is taken in a handler)."""
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        watched = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, _ignore) for sig in watched}
        old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        thread = threading.Thread(
            target=self._read_signals, args=(reader,), name="vault-bridge-signals", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            writer.close()
            thread.join(2)
            reader.close()

    def _read_signals(self, reader: socket.socket) -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        with self._mutex:
            self._signals.add(signum)
        if signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            logger.info(
                "received %s: finishing the step in progress, then stopping",
                signal.Signals(signum).name,
            )
            self.stopping = True
            grace = self._stop_grace().total_seconds()
            self._watchdog = threading.Timer(grace, self._overdue, args=(grace,))
            self._watchdog.daemon = True
            self._watchdog.start()
        elif signum == signal.SIGHUP:
            logger.info("received SIGHUP: reloading the configuration")
        self._wake.set()

    def _overdue(self, grace: float) -> None:
        logger.error(
            "the step in progress did not finish within stop_grace (%ss); exiting now: the "
            "journal resumes it at the next start",
            grace,
        )
        logging.shutdown()
        os._exit(1)


def _ignore(signum: int, frame: object) -> None:
    return None
