"""The API budget's bookkeeping: when Salesforce calls pause, and when they resume."""

from __future__ import annotations

from receiver.errors import RateLimited
from receiver.targets.salesforce.budget import BUDGET_CODE, ApiBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_use_at_the_share_does_not_pause_and_above_it_does() -> None:
    clock = Clock()
    budget = ApiBudget(0.8, recheck_s=900, clock=clock)
    budget.observe(800, 1000)
    assert not budget.paused
    budget.observe(801, 1000)
    assert budget.paused
    assert budget.recheck_at == clock.now + 900
    assert budget.status() == {"used": 801, "limit": 1000, "paused": True}


def test_later_reports_above_the_share_keep_the_first_recheck_time() -> None:
    clock = Clock()
    budget = ApiBudget(0.5, recheck_s=900, clock=clock)
    budget.observe(600, 1000)
    first = budget.recheck_at
    clock.now += 100
    budget.observe(650, 1000)
    assert budget.recheck_at == first
    assert not budget.recheck_due()
    clock.now += 800
    assert budget.recheck_due()


def test_refusal_is_a_rate_limit_until_the_next_recheck() -> None:
    clock = Clock()
    budget = ApiBudget(0.8, recheck_s=900, clock=clock)
    budget.observe(900, 1000)
    clock.now += 300
    refusal = budget.refusal()
    assert isinstance(refusal, RateLimited)
    assert refusal.code == BUDGET_CODE
    assert refusal.retry_after == 600
    assert "900/1000" in refusal.message


def test_limits_answer_below_the_share_resumes_and_above_it_waits_again() -> None:
    clock = Clock()
    budget = ApiBudget(0.8, recheck_s=900, clock=clock)
    budget.observe(900, 1000)
    clock.now += 900
    budget.rechecked({"DailyApiRequests": {"Max": 1000, "Remaining": 50}})
    assert budget.paused and budget.recheck_at == clock.now + 900
    assert budget.used == 950
    clock.now += 900
    budget.rechecked({"DailyApiRequests": {"Max": 1000, "Remaining": 700}})
    assert not budget.paused
    assert budget.status() == {"used": 300, "limit": 1000, "paused": False}


def test_an_unreadable_limits_answer_keeps_the_pause() -> None:
    clock = Clock()
    budget = ApiBudget(0.8, clock=clock)
    budget.observe(900, 1000)
    clock.now += 1_000
    budget.rechecked(None)
    assert budget.paused and not budget.recheck_due()


def test_nothing_reported_is_not_paused() -> None:
    budget = ApiBudget(0.8)
    assert budget.ratio is None
    assert budget.status() == {"used": None, "limit": None, "paused": False}
