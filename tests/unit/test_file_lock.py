"""The one lock-and-poll loop, with an injected clock: no real waiting."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vault_bridge.adapters.file_lock import flock_within, unlock


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fds(tmp_path: Path) -> Iterator[tuple[int, int]]:
    path = tmp_path / "lock"
    first = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    second = os.open(path, os.O_RDWR)  # another open file description: flock conflicts
    yield first, second
    os.close(first)
    os.close(second)


def test_a_held_lock_is_polled_until_the_wait_runs_out(fds: tuple[int, int]) -> None:
    first, second = fds
    clock = Clock()
    assert flock_within(first, 0, poll=0.25, clock=clock, sleep=clock.sleep)
    assert not flock_within(second, 1.0, poll=0.25, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [0.25] * 4 and clock.now == 101.0
    assert not flock_within(second, 0, poll=0.25, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [0.25] * 4  # wait 0: one try, no sleep


def test_a_free_lock_is_taken_at_once(fds: tuple[int, int]) -> None:
    first, second = fds
    clock = Clock()
    assert flock_within(first, 0, poll=0.25, clock=clock, sleep=clock.sleep)
    unlock(first)
    assert flock_within(second, None, poll=0.25, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []
    assert not flock_within(first, 0, poll=0.25, clock=clock, sleep=clock.sleep)


def test_waiting_without_bound_ends_when_the_holder_lets_go(fds: tuple[int, int]) -> None:
    first, second = fds
    clock = Clock()
    assert flock_within(first, 0, poll=0.1, clock=clock, sleep=clock.sleep)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:
            unlock(first)

    assert flock_within(second, None, poll=0.1, clock=clock, sleep=sleep)
    assert len(clock.sleeps) == 3
