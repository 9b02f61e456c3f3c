"""One search page for a job, with HubSpot's limits and failures waited out.

A rate limit waits as long as HubSpot asks and uses no attempt; other transient
failures (5xx, timeouts, an expired token) back off exponentially, up to
:data:`MAX_TRANSIENT` in a row, after which the job fails with the last error; a
permanent error fails it at once. Waiting goes through the job's ``wait``, which
renews its lease and may stop it (a cancel, a shutdown). A token HubSpot refuses is
alerted on at once (``alerts``), as the dispatcher does for its reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from receiver.errors import AuthExpired, RateLimited, TokenRefused, TransientError
from receiver.hubspot.search import ContactSearch, Filter, SearchCursor, SearchPage
from receiver.ops.logging import get_logger

log = get_logger("receiver.jobs.paging")

MAX_TRANSIENT = 8
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 120.0

#: Waits ``seconds``; may raise to stop the job (see :class:`Stopped`).
Wait = Callable[[float], Awaitable[None]]


class TokenAlerts(Protocol):
    """Told when HubSpot refuses the token (the alerts); must not block."""

    def token_refused(self, api: str, code: str) -> None:
        """``api`` refused its token with ``code``."""
        ...


class Stopped(Exception):
    """The job must stop now: cancelled, shut down, or its lease lost."""


@dataclass
class Pager:
    """Reads pages for one job and counts the HubSpot calls it made."""

    search: ContactSearch
    properties: Sequence[str]
    clock: Callable[[], float]
    alerts: TokenAlerts | None = None
    calls: int = 0

    async def page(
        self, filters: Sequence[Filter], cursor: SearchCursor, wait: Wait, job: str
    ) -> SearchPage:
        """The page at ``cursor``; raises the last error once retrying cannot help."""
        failures = 0
        while True:
            try:
                page = await self.search.page(filters, self.properties, cursor, self.clock())
            except RateLimited as exc:
                self.calls += 1
                delay = exc.retry_after if exc.retry_after is not None else 10.0
                log.info("search_rate_limited", job=job, error_code=exc.code, wait_s=delay)
                await wait(delay)
                continue
            except TransientError as exc:
                self.calls += 1
                self._refused(exc)
                failures += 1
                if failures >= MAX_TRANSIENT:
                    raise
                delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))
                delay = max(delay, exc.retry_after or 0.0)
                log.warning("search_retry", job=job, error_code=exc.code, wait_s=delay)
                await wait(delay)
                continue
            except Exception as exc:
                self.calls += 1
                self._refused(exc)
                raise
            self.calls += page.calls
            return page

    def _refused(self, exc: Exception) -> None:
        if self.alerts is not None and isinstance(exc, AuthExpired | TokenRefused):
            self.alerts.token_refused("hubspot", exc.code)
