"""A clock the test moves by hand, for ``create_app(settings, clock=...)``."""

from __future__ import annotations


class Clock:
    """Unix seconds, held at ``now`` until the test changes it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``."""
        self.now += seconds
