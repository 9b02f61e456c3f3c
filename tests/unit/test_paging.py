"""A job's search pages: a token HubSpot refuses is alerted on at once, while the page is
still retried as a transient failure; other failures alert nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from receiver.errors import AuthExpired, TransientError, UpstreamError
from receiver.hubspot.search import Filter, SearchCursor, SearchPage
from receiver.jobs import paging
from receiver.jobs.paging import Pager


class FailingSearch:
    """Answers each call with the next scripted error, then an empty last page."""

    def __init__(self, *errors: UpstreamError) -> None:
        self.errors = list(errors)

    async def page(
        self, filters: Sequence[Filter], properties: Sequence[str], cursor: Any, now: float
    ) -> SearchPage:
        if self.errors:
            raise self.errors.pop(0)
        return SearchPage([], None, 1)


class RecordingAlerts:
    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []

    def token_refused(self, api: str, code: str) -> None:
        self.refused.append((api, code))


async def no_wait(seconds: float) -> None:
    return None


async def test_a_refused_token_is_alerted_at_once_and_the_page_retried() -> None:
    alerts = RecordingAlerts()
    search = FailingSearch(AuthExpired("INVALID_AUTHENTICATION", "expired"))
    pager = Pager(search, ["email"], lambda: 0.0, alerts)  # type: ignore[arg-type]
    page = await pager.page([], SearchCursor(), no_wait, "backfill")
    assert page.next is None
    assert alerts.refused == [("hubspot", "INVALID_AUTHENTICATION")]
    assert pager.calls == 2


async def test_a_token_refused_every_time_fails_the_job_and_each_refusal_is_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(paging, "MAX_TRANSIENT", 3)
    alerts = RecordingAlerts()
    search = FailingSearch(*(AuthExpired("INVALID_AUTHENTICATION", "no") for _ in range(3)))
    pager = Pager(search, ["email"], lambda: 0.0, alerts)  # type: ignore[arg-type]
    with pytest.raises(AuthExpired):
        await pager.page([], SearchCursor(), no_wait, "backfill")
    assert len(alerts.refused) == 3


async def test_a_server_error_alerts_nothing() -> None:
    alerts = RecordingAlerts()
    search = FailingSearch(TransientError("http_503", "unavailable"))
    pager = Pager(search, ["email"], lambda: 0.0, alerts)  # type: ignore[arg-type]
    await pager.page([], SearchCursor(), no_wait, "reconcile")
    assert alerts.refused == []
