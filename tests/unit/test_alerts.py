"""Alerts: the message says counts, codes and ids only; delivery retries, then logs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from structlog.testing import capture_logs

from receiver.hubspot.payload import to_new_events
from receiver.ops.alerts import ATTEMPTS, Alerts, Tally, alert_text
from tests.fakes.doubles import InMemoryStore
from tests.support.webhooks import event


def test_the_text_sums_failures_by_code_and_names_refused_tokens_and_the_backlog() -> None:
    tally = Tally()
    tally.failed.update({"INVALID_FIELD": 3, "http_400": 1})
    tally.sample_ids.extend([4, 5])
    tally.refused["target CRM"] = {"INVALID_SESSION_ID"}
    tally.backlog_age_s = 2000.4
    text = alert_text(tally, 300, 1800)
    assert "4 events failed" in text and "INVALID_FIELD x3, http_400 x1" in text
    assert "Event ids: 4, 5." in text
    assert "target CRM refused its token (INVALID_SESSION_ID)" in text
    assert "2000 s" in text and "1800 s" in text


async def test_a_refused_delivery_is_retried_then_logged_without_the_url() -> None:
    url = "https://hooks.example.com/services/T000/B000/secretpart"
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        alerts = Alerts(
            http=http,
            url=url,
            store=InMemoryStore(),
            interval_s=300,
            backlog_s=1800,
            retry_base_s=0.001,
        )
        with capture_logs() as logs:
            assert not await alerts.deliver("stagesync: 1 event failed")
    assert len(calls) == ATTEMPTS
    (line,) = [e for e in logs if e["event"] == "alert_delivery_failed"]
    assert line["error"] == "http_503"
    assert "secretpart" not in repr(logs) and "secretpart" not in repr(alerts)


async def test_reports_only_add_to_the_tally() -> None:
    async with httpx.AsyncClient() as http:
        alerts = Alerts(http=http, url="http://127.0.0.1:9/x", store=InMemoryStore(),
                        interval_s=300, backlog_s=1800)  # fmt: skip
        alerts.failed([(1, "A"), (2, None)])
        alerts.token_refused("hubspot", "INVALID_AUTHENTICATION")
        assert alerts._tally.failed == {"A": 1, "unknown": 1}
        assert alerts._tally.refused == {"HubSpot API": {"INVALID_AUTHENTICATION"}}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def backlog() -> AsyncIterator[tuple[Alerts, InMemoryStore, Clock]]:
    """Backlog alerts over 1800 s on an in-memory store, at the clock's time."""
    store, clock = InMemoryStore(), Clock(1_000.0)
    async with httpx.AsyncClient() as http:
        yield Alerts(http=http, url="http://127.0.0.1:9/x", store=store, interval_s=300,
                     backlog_s=1800, clock=clock), store, clock  # fmt: skip


async def test_the_backlog_is_reported_only_past_the_threshold(
    backlog: tuple[Alerts, InMemoryStore, Clock],
) -> None:
    alerts, store, clock = backlog
    await alerts.check_backlog()
    assert alerts._tally.empty()
    await store.ingest(to_new_events([event(1, "lead")]), 1_000.0)
    clock.now = 1_000.0 + 1800
    await alerts.check_backlog()
    assert alerts._tally.empty()
    clock.now = 1_000.0 + 1801
    await alerts.check_backlog()
    assert alerts._tally.backlog_age_s == 1801


async def test_an_event_in_flight_is_no_backlog_but_one_no_lease_holds_is(
    backlog: tuple[Alerts, InMemoryStore, Clock],
) -> None:
    alerts, store, clock = backlog
    await store.ingest(to_new_events([event(1, "lead")]), 1_000.0)
    await store.claim("a", 2_000.0, 3600, 10)  # a long target call, lease held
    clock.now = 1_000.0 + 2000
    await alerts.check_backlog()
    assert alerts._tally.empty()
    await store.ingest(to_new_events([event(2, "lead")]), 1_100.0)
    await alerts.check_backlog()
    assert alerts._tally.backlog_age_s == 1900
