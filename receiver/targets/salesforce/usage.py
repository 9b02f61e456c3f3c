"""Logging Salesforce's report of the org's daily API use (``Sforce-Limit-Info``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from receiver.ops.logging import get_logger

log = get_logger("receiver.targets.salesforce")

#: Seconds between two ``salesforce_api_usage`` log lines: every call reports usage.
USAGE_LOG_INTERVAL_S = 60.0
#: Share of the daily API allocation from which the usage line is a warning.
USAGE_WARN_SHARE = 0.9


class UsageLogger:
    """Logs Salesforce API usage (``Sforce-Limit-Info``) at most once per interval.

    The first report is logged at once; later ones only when ``interval_s`` has passed.
    """

    def __init__(
        self,
        interval_s: float = USAGE_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None

    def __call__(self, used: int, limit: int) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            return
        self._last = now
        share = used / limit if limit > 0 else 0.0
        emit = log.warning if share >= USAGE_WARN_SHARE else log.info
        emit("salesforce_api_usage", used=used, limit=limit, percent=round(100 * share, 1))
