"""Retry delays: exponential backoff with full jitter. Pure functions.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads retries of
many events failing together, so a recovering CRM is not hit by a synchronized wave.
A ``Retry-After`` from the upstream is a floor: the next attempt never comes earlier.

:func:`classify` is the one place where an error on a dispatch becomes its outcome: a
delay, a retry or ``failed`` (the dispatcher exports it as
``receiver.dispatch.dispatcher.classify``).

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

from receiver.errors import PermanentError, RateLimited, TransientError, UpstreamError
from receiver.models import Outcome, StoredEvent


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


def classify(
    exc: BaseException,
    event: StoredEvent,
    attempt_floor: int,
    policy: RetryPolicy,
    now: float,
    rate_streak: int = 1,
) -> Outcome:
    """Map an error on ``event``'s dispatch to its outcome: delay, retry or ``failed``.

    A rate limit uses up no attempt and only delays, for the upstream's ``retry_after``
    or else by backoff on ``rate_streak``, the count of rate-limit answers in a row
    (:meth:`RetryPolicy.rate_limit_delay`). Other transient errors
    use an attempt and back off, until the budget is spent. Anything unexpected is
    treated as transient, so a bug can never drop an event.
    """
    if isinstance(exc, RateLimited):
        return Outcome(
            event_id=event.id,
            state="retrying",
            error_code=exc.code,
            error_message=exc.message,
            next_attempt_at=now + policy.rate_limit_delay(rate_streak, exc.retry_after),
            counts_attempt=False,
        )
    if isinstance(exc, PermanentError):
        return Outcome(
            event_id=event.id, state="failed", error_code=exc.code, error_message=exc.message
        )
    if isinstance(exc, UpstreamError):
        code, message = exc.code, exc.message
    else:
        code, message = "internal_error", f"{type(exc).__name__}: {exc}"
    attempt = event.attempts + 1 - attempt_floor
    if policy.exhausted(attempt):
        # MAX_ATTEMPTS counts from the last replay, while ``attempts`` counts them all.
        tried = f"{attempt} attempts"
        if attempt_floor:
            tried += f" since the last replay, {event.attempts + 1} in all"
        return Outcome(
            event_id=event.id,
            state="failed",
            error_code=code,
            error_message=f"{message} (gave up after {tried})",
        )
    retry_after = exc.retry_after if isinstance(exc, TransientError) else None
    return Outcome(
        event_id=event.id,
        state="retrying",
        error_code=code,
        error_message=message,
        next_attempt_at=now + policy.delay(attempt, retry_after),
    )
