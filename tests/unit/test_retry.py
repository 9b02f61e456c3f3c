"""Retry delays (exponential, full jitter, Retry-After floor, cap) and ``classify``,
the one place where an error becomes a delay, a retry or ``failed``."""

from __future__ import annotations

import random

import pytest

from receiver.errors import (
    AuthExpired,
    PermanentError,
    RateLimited,
    TransientError,
    UpstreamError,
)
from receiver.models import StoredEvent
from receiver.sync.retry import RetryPolicy, classify

POLICY = RetryPolicy(base_s=5.0, max_s=3600.0, max_attempts=10)
NOW = 1_700_000_000.0


def pending(attempts: int = 0, attempt_floor: int = 0) -> StoredEvent:
    return StoredEvent(
        id=42,
        state="retrying" if attempts else "pending",
        reason=None,
        object_id=7,
        subscription_type="contact.propertyChange",
        occurred_at=1,
        stage="lead",
        attempts=attempts,
        last_error_code=None,
        last_error_message=None,
        received_at=NOW,
        updated_at=NOW,
        target_kind=None,
        target_id=None,
        raw={},
        attempt_floor=attempt_floor,
    )


# -- delays -----------------------------------------------------------------------------


def test_the_ceiling_doubles_from_the_base_per_attempt() -> None:
    assert [POLICY.ceiling(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]


def test_the_ceiling_stops_at_the_cap_even_for_huge_attempt_numbers() -> None:
    assert POLICY.ceiling(11) == 3600.0
    assert POLICY.ceiling(10_000) == 3600.0


def test_every_delay_lies_between_zero_and_the_ceiling() -> None:
    rand = random.Random(1)
    for attempt in range(1, 15):
        for _ in range(200):
            assert 0.0 <= POLICY.delay(attempt, rand=rand) <= POLICY.ceiling(attempt)


def test_delays_are_fully_jittered_over_the_whole_range() -> None:
    rand = random.Random(2)
    draws = [POLICY.delay(4, rand=rand) for _ in range(2000)]
    ceiling = POLICY.ceiling(4)
    assert min(draws) < 0.05 * ceiling and max(draws) > 0.95 * ceiling
    # Uniform: about half the draws fall in each half.
    low = sum(d < ceiling / 2 for d in draws)
    assert 850 < low < 1150


def test_retry_after_is_a_floor_for_the_delay() -> None:
    rand = random.Random(3)
    assert all(POLICY.delay(1, retry_after=30.0, rand=rand) >= 30.0 for _ in range(200))


def test_retry_after_beyond_the_cap_is_still_honoured() -> None:
    assert POLICY.delay(20, retry_after=7200.0, rand=random.Random(4)) >= 7200.0


def test_a_rate_limit_waits_exactly_what_the_upstream_asked_whatever_the_streak() -> None:
    assert POLICY.rate_limit_delay(1, 10.0) == 10.0
    assert POLICY.rate_limit_delay(50, 900.0) == 900.0


def test_a_rate_limit_without_retry_after_backs_off_by_the_streak() -> None:
    rand = random.Random(5)
    for streak in (1, 3, 8, 20):
        draws = [POLICY.rate_limit_delay(streak, None, rand) for _ in range(100)]
        assert all(0 <= d <= POLICY.ceiling(streak) for d in draws)
    assert max(POLICY.rate_limit_delay(9, None, rand) for _ in range(100)) > POLICY.ceiling(3)


def test_the_budget_is_spent_at_max_attempts() -> None:
    assert not POLICY.exhausted(9)
    assert POLICY.exhausted(10)


# -- classify ---------------------------------------------------------------------------


def test_a_rate_limit_delays_without_using_an_attempt() -> None:
    outcome = classify(RateLimited("RATE_LIMIT", "slow down", 10.0), pending(3), 0, POLICY, NOW)
    assert outcome.state == "retrying" and not outcome.counts_attempt
    assert outcome.next_attempt_at == NOW + 10.0
    assert (outcome.error_code, outcome.error_message) == ("RATE_LIMIT", "slow down")


def test_a_rate_limit_never_fails_an_event_even_past_max_attempts() -> None:
    outcome = classify(RateLimited("RATE_LIMIT", "x", 1.0), pending(50), 0, POLICY, NOW)
    assert outcome.state == "retrying" and not outcome.counts_attempt


def test_classify_backs_off_a_rate_limit_without_retry_after_by_the_streak() -> None:
    exc = RateLimited("REQUEST_LIMIT_EXCEEDED", "busy")
    delays = [
        classify(exc, pending(), 0, POLICY, NOW, rate_streak=6).next_attempt_at or 0.0
        for _ in range(300)
    ]
    assert all(NOW <= d <= NOW + POLICY.ceiling(6) for d in delays)
    assert max(delays) > NOW + POLICY.ceiling(5)


def test_a_transient_error_retries_using_an_attempt() -> None:
    outcome = classify(TransientError("http_503", "unavailable"), pending(2), 0, POLICY, NOW)
    assert outcome.state == "retrying" and outcome.counts_attempt
    assert NOW <= (outcome.next_attempt_at or 0) <= NOW + POLICY.ceiling(3)
    assert outcome.error_code == "http_503"


def test_a_transient_retry_after_is_the_floor_of_the_next_attempt() -> None:
    outcome = classify(TransientError("http_503", "x", 120.0), pending(), 0, POLICY, NOW)
    assert (outcome.next_attempt_at or 0) >= NOW + 120.0


def test_an_expired_token_that_stays_expired_is_retried_as_transient() -> None:
    outcome = classify(AuthExpired("INVALID_SESSION_ID", "expired"), pending(), 0, POLICY, NOW)
    assert outcome.state == "retrying" and outcome.counts_attempt


def test_a_permanent_error_fails_at_once_keeping_code_and_message() -> None:
    exc = PermanentError("INVALID_EMAIL_ADDRESS", "Email: invalid email address: x")
    outcome = classify(exc, pending(), 0, POLICY, NOW)
    assert outcome.state == "failed" and outcome.counts_attempt
    assert outcome.error_code == "INVALID_EMAIL_ADDRESS"
    assert outcome.error_message == "Email: invalid email address: x"
    assert outcome.next_attempt_at is None


def test_a_plain_upstream_error_is_treated_as_transient() -> None:
    outcome = classify(UpstreamError("odd", "unexpected"), pending(), 0, POLICY, NOW)
    assert outcome.state == "retrying" and outcome.error_code == "odd"


def test_an_unexpected_exception_is_retried_never_dropped() -> None:
    outcome = classify(KeyError("boom"), pending(), 0, POLICY, NOW)
    assert outcome.state == "retrying" and outcome.counts_attempt
    assert outcome.error_code == "internal_error" and "KeyError" in (outcome.error_message or "")


@pytest.mark.parametrize("exc", [TransientError("http_500", "x"), KeyError("k")])
def test_the_attempt_that_reaches_max_attempts_fails(exc: BaseException) -> None:
    outcome = classify(exc, pending(attempts=9), 0, POLICY, NOW)
    assert outcome.state == "failed" and "gave up after 10 attempts" in (
        outcome.error_message or ""
    )
    assert classify(exc, pending(attempts=8), 0, POLICY, NOW).state == "retrying"


def test_a_replayed_event_gets_a_fresh_budget() -> None:
    event = pending(attempts=10, attempt_floor=10)
    assert classify(TransientError("x", "y"), event, 10, POLICY, NOW).state == "retrying"


def test_giving_up_after_a_replay_names_the_attempts_of_this_round_and_in_all() -> None:
    event = pending(attempts=19, attempt_floor=10)
    outcome = classify(TransientError("http_500", "down"), event, 10, POLICY, NOW)
    assert outcome.state == "failed"
    assert outcome.error_message == (
        "down (gave up after 10 attempts since the last replay, 20 in all)"
    )
