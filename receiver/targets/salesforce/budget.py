"""The org's daily API budget: stop calling Salesforce above a share of it.

Salesforce's daily API allocation is shared by every integration in the org: one that
spends it all stops the others too. Every REST answer reports the org's use
(``Sforce-Limit-Info: api-usage=used/limit``); once that use is above ``share`` of the
limit, :class:`ApiBudget` pauses the target. A paused target makes no call and raises
``RateLimited`` (a delay that uses no attempt) until the next re-check, which asks
``GET /limits`` (``DailyApiRequests``) at most once per ``recheck_s``.

Pure bookkeeping: the target makes the calls and passes in what it learns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from receiver.errors import RateLimited

#: Seconds between two re-checks of a paused budget.
RECHECK_S = 900.0
#: The error code of work held back by the budget.
BUDGET_CODE = "API_BUDGET"


class ApiBudget:
    """The last reported use, and whether Salesforce calls are paused."""

    def __init__(
        self,
        share: float,
        *,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.share = share
        self.recheck_s = recheck_s
        self.clock = clock
        self.used: int | None = None
        self.limit: int | None = None
        #: When the paused budget is next checked with ``GET /limits``; None: not paused.
        self.recheck_at: float | None = None

    @property
    def paused(self) -> bool:
        """True while calls are held back."""
        return self.recheck_at is not None

    @property
    def ratio(self) -> float | None:
        """The share of the daily limit used, as last reported."""
        if self.used is None or not self.limit:
            return None
        return self.used / self.limit

    def observe(self, used: int, limit: int) -> None:
        """Take a report of the org's use; pauses above the share, resumes below it."""
        self.used, self.limit = used, limit
        if not self._over():
            self.recheck_at = None
        elif self.recheck_at is None:
            self.recheck_at = self.clock() + self.recheck_s

    def recheck_due(self) -> bool:
        """True when paused and the time for a ``GET /limits`` has come."""
        return self.recheck_at is not None and self.clock() >= self.recheck_at

    def rechecked(self, limits: Any) -> None:
        """Take a ``GET /limits`` answer; still over the share, the next check is set."""
        daily = limits.get("DailyApiRequests") if isinstance(limits, dict) else None
        maximum = daily.get("Max") if isinstance(daily, dict) else None
        remaining = daily.get("Remaining") if isinstance(daily, dict) else None
        if isinstance(maximum, int) and isinstance(remaining, int):
            self.used, self.limit = maximum - remaining, maximum
        if self._over():
            self.recheck_at = self.clock() + self.recheck_s
        else:
            self.recheck_at = None

    def refusal(self) -> RateLimited:
        """The error of a call held back, to be retried at the next re-check."""
        now = self.clock()
        wait = max(0.0, (self.recheck_at or now) - now)
        used = f"{self.used}/{self.limit}" if self.used is not None else "unknown"
        return RateLimited(
            BUDGET_CODE,
            f"Salesforce calls are paused: the org used {used} of its daily API requests, "
            f"above the budget of {self.share:.0%} (SALESFORCE_API_BUDGET); "
            f"checked again in {wait:.0f} s",
            retry_after=wait,
        )

    def status(self) -> dict[str, Any]:
        """``{"used", "limit", "paused"}`` for ``/status``."""
        return {"used": self.used, "limit": self.limit, "paused": self.paused}

    def _over(self) -> bool:
        ratio = self.ratio
        return ratio is not None and ratio > self.share
