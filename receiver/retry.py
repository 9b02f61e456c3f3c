"""Retry delays: exponential backoff with full jitter. Pure functions.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads retries of
many events failing together, so a recovering CRM is not hit by a synchronized wave.
A ``Retry-After`` from the upstream is a floor: the next attempt never comes earlier.

A rate-limit answer is no failure of the event: it delays the work without using an
attempt. When the upstream says how long to wait (HubSpot always does, through
``Retry-After`` or its policy name) that is the delay, neither shortened nor stretched
by backoff; a ``DAILY`` limit re-checked every 15 minutes must not drift to an hour.
When it does not (Salesforce's ``REQUEST_LIMIT_EXCEEDED``) the delay follows the
normal schedule, by the number of rate-limit answers in a row.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff settings: ``base_s * 2**(attempt-1)`` capped at ``max_s``, fully jittered."""

    base_s: float = 5.0
    max_s: float = 3600.0
    max_attempts: int = 10

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay after the ``attempt``-th failure (1-based)."""
        exponent = min(max(attempt - 1, 0), 60)
        return float(min(self.max_s, self.base_s * (2**exponent)))

    def delay(
        self, attempt: int, retry_after: float | None = None, rand: random.Random | None = None
    ) -> float:
        """Seconds to wait after the ``attempt``-th failure, honouring ``retry_after``."""
        draw = (rand or random).uniform(0, self.ceiling(attempt))
        return max(draw, retry_after or 0.0)

    def rate_limit_delay(
        self, streak: int, retry_after: float | None, rand: random.Random | None = None
    ) -> float:
        """Seconds to wait after the ``streak``-th rate-limit answer in a row.

        ``retry_after`` (what the upstream asked for) is used as it is; without it the
        delay is drawn as after the ``streak``-th failure.
        """
        if retry_after is not None:
            return max(0.0, retry_after)
        return self.delay(max(1, streak), None, rand)

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` used up the budget."""
        return attempts >= self.max_attempts
