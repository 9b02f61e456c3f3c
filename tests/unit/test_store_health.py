"""Commit health: a database failure shows until a commit succeeds or its window ends."""

from __future__ import annotations

from receiver.store.health import CommitHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_shows_until_a_commit_succeeds() -> None:
    health = CommitHealth(window_s=30.0, clock=Clock())
    assert health.problem() is None
    health.failed("database or disk is full")
    assert health.problem() == "database or disk is full"
    health.succeeded()
    assert health.problem() is None


def test_a_failure_is_forgotten_after_its_window_when_nothing_is_tried() -> None:
    # Out of a load balancer's rotation, no webhook would come to clear it.
    clock = Clock()
    health = CommitHealth(window_s=30.0, clock=clock)
    health.failed("disk I/O error")
    clock.now += 29.9
    assert health.problem() == "disk I/O error"
    clock.now += 0.1
    assert health.problem() is None


def test_a_new_failure_starts_a_new_window() -> None:
    clock = Clock()
    health = CommitHealth(window_s=30.0, clock=clock)
    health.failed("first")
    clock.now += 25
    health.failed("second")
    clock.now += 25
    assert health.problem() == "second"
