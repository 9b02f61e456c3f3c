"""Rate limits: RequestPacer pacing and pauses on a fake clock, and HubSpot 429 delays."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.hubspot.client import DAILY_RECHECK_S, rate_limit_delay
from receiver.hubspot.pacer import RequestPacer

# 2024-03-10 23:58:00 UTC: two minutes before midnight
BEFORE_MIDNIGHT = datetime(2024, 3, 10, 23, 58, tzinfo=UTC).timestamp()
NOON = datetime(2024, 3, 10, 12, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """A clock whose ``sleep`` advances it at once, recording each sleep."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def pacer(max_requests: int, interval_s: float, clock: FakeClock) -> RequestPacer:
    return RequestPacer(max_requests, interval_s, clock=clock, sleep=clock.sleep)


async def test_acquire_returns_at_once_while_the_window_has_room() -> None:
    clock = FakeClock()
    p = pacer(3, 10.0, clock)
    for _ in range(3):
        await p.acquire()
    assert clock.sleeps == []


async def test_a_finished_call_counts_in_the_window_from_its_end_not_its_start() -> None:
    clock = FakeClock(start=0.0)
    p = pacer(2, 10.0, clock)
    await p.acquire()  # t=0
    await p.acquire()  # t=0
    clock.now = 3.0
    p.done()  # arrived upstream as late as t=3
    p.done()
    clock.now = 10.5
    await p.acquire()  # a start stamp would have left at t=10; the end stamp leaves at 13
    assert clock.now == 13.0


async def test_acquire_sleeps_until_the_oldest_call_leaves_the_window() -> None:
    clock = FakeClock(start=0.0)
    p = pacer(2, 10.0, clock)
    await p.acquire()  # t=0
    clock.now = 4.0
    await p.acquire()  # t=4
    clock.now = 5.0
    await p.acquire()  # full until the t=0 call leaves at t=10
    assert clock.sleeps == [5.0]
    assert clock.now == 10.0
    await p.acquire()  # full until the t=4 call leaves at t=14
    assert clock.now == 14.0


async def test_no_window_of_interval_length_ever_holds_more_than_max_requests() -> None:
    clock = FakeClock()
    p = pacer(10, 10.0, clock)
    starts: list[float] = []
    for _ in range(55):
        await p.acquire()
        starts.append(clock.now)
        clock.now += 0.3
    for i in range(len(starts) - 10):
        assert starts[i + 10] - starts[i] >= 10.0


async def test_concurrent_waiters_are_served_in_arrival_order() -> None:
    clock = FakeClock()
    p = pacer(1, 1.0, clock)
    order: list[int] = []

    async def call(n: int) -> None:
        await p.acquire()
        order.append(n)

    await asyncio.gather(*(call(n) for n in range(6)))
    assert order == list(range(6))
    assert clock.sleeps == [1.0] * 5


async def test_pause_until_holds_every_caller_even_with_room_in_the_window() -> None:
    clock = FakeClock(start=100.0)
    p = pacer(100, 10.0, clock)
    p.pause_until(130.0)
    assert p.delay() == 30.0
    await p.acquire()
    assert clock.now == 130.0
    await p.acquire()
    assert clock.sleeps == [30.0]


async def test_an_earlier_pause_never_shortens_a_longer_one() -> None:
    clock = FakeClock(start=0.0)
    p = pacer(5, 10.0, clock)
    p.pause_until(50.0)
    p.pause_until(20.0)
    p.pause_for(5.0)
    assert p.paused_until == 50.0


async def test_pause_for_is_relative_to_the_pacer_clock() -> None:
    clock = FakeClock(start=7.0)
    p = pacer(5, 10.0, clock)
    assert p.paused_until == float("-inf")
    p.pause_for(10.0)
    assert p.paused_until == 17.0
    p.pause_for(-3.0)  # a negative pause is no pause
    assert p.paused_until == 17.0


async def test_a_pause_set_while_a_caller_waits_extends_its_wait() -> None:
    clock = FakeClock(start=0.0)
    p = pacer(1, 10.0, clock)
    real_sleep = clock.sleep

    async def sleep_then_pause(seconds: float) -> None:
        await real_sleep(seconds)
        if len(clock.sleeps) == 1:
            p.pause_until(clock.now + 25.0)  # a 429 arrived meanwhile

    p._sleep = sleep_then_pause
    await p.acquire()
    await p.acquire()
    assert clock.sleeps == [10.0, 25.0]
    assert clock.now == 35.0


async def test_delay_is_zero_when_a_call_could_start_now() -> None:
    clock = FakeClock()
    p = pacer(1, 10.0, clock)
    assert p.delay() == 0.0
    await p.acquire()
    assert p.delay() == 10.0
    clock.now += 10.0
    assert p.delay() == 0.0


async def test_a_cancelled_waiter_does_not_block_the_next_one() -> None:
    p = RequestPacer(1, 60.0)
    await p.acquire()
    waiter = asyncio.create_task(p.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    p._sent.clear()  # the window empties
    await asyncio.wait_for(p.acquire(), timeout=1.0)


async def test_default_clock_and_sleep_pace_for_real() -> None:
    p = RequestPacer(1, 0.05)
    started = time.monotonic()
    await p.acquire()
    await p.acquire()
    assert time.monotonic() - started >= 0.045


@pytest.mark.parametrize(("max_requests", "interval_s"), [(0, 10.0), (5, 0.0), (5, -1.0)])
def test_nonsense_limits_are_refused(max_requests: int, interval_s: float) -> None:
    with pytest.raises(ValueError):
        RequestPacer(max_requests, interval_s)


# -- rate_limit_delay: how long a HubSpot 429 waits ------------------------


def test_retry_after_seconds_win_over_the_policy() -> None:
    assert rate_limit_delay("DAILY", "3", NOON) == 3.0
    assert rate_limit_delay("TEN_SECONDLY_ROLLING", "2.5", NOON) == 2.5


def test_retry_after_http_date_counts_from_now() -> None:
    assert rate_limit_delay(None, "Sun, 10 Mar 2024 12:00:42 GMT", NOON) == 42.0
    assert rate_limit_delay(None, "Sun, 10 Mar 2024 11:00:00 GMT", NOON) == 0.0


def test_unreadable_retry_after_falls_back_to_the_policy() -> None:
    assert rate_limit_delay("TEN_SECONDLY_ROLLING", "soon", NOON) == 10.0
    assert rate_limit_delay("TEN_SECONDLY_ROLLING", "nan", NOON) == 10.0
    assert rate_limit_delay("TEN_SECONDLY_ROLLING", "-5", NOON) == 0.0


def test_ten_secondly_and_unknown_policies_wait_ten_seconds() -> None:
    assert rate_limit_delay("TEN_SECONDLY_ROLLING", None, NOON) == 10.0
    assert rate_limit_delay(None, None, NOON) == 10.0
    assert rate_limit_delay("SOMETHING_NEW", "", NOON) == 10.0
    assert rate_limit_delay("SECONDLY", None, NOON) == 1.0


def test_daily_waits_until_midnight_utc_when_that_is_near() -> None:
    assert rate_limit_delay("DAILY", None, BEFORE_MIDNIGHT) == 120.0


def test_daily_rechecks_every_fifteen_minutes_when_midnight_is_far() -> None:
    assert rate_limit_delay("DAILY", None, NOON) == DAILY_RECHECK_S
    assert rate_limit_delay("daily", None, NOON) == DAILY_RECHECK_S


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_daily_delay_never_passes_midnight_nor_fifteen_minutes(now: float) -> None:
    delay = rate_limit_delay("DAILY", None, now)
    next_midnight = (now // 86400 + 1) * 86400
    assert 0 < delay <= DAILY_RECHECK_S
    assert now + delay <= next_midnight + 1e-6
