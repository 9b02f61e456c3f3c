"""Sync health over real HTTP on both backends: failures grouped by code, replay by code,
the streamed CSV export, and alerts to a loopback sink."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from receiver.errors import PermanentError
from receiver.web.admin import failures
from tests.integration.conftest import Backend
from tests.integration.test_sync_settings import Instance, instance
from tests.support.servers import running_server
from tests.support.webhooks import event

AUTH = {"Authorization": "Bearer sync-settings-token-0123456789abcdef"}
WAIT_S = 5.0
SECRET_EMAIL = "ada.lovelace@example.com"


@pytest.fixture
def backend(database: Backend) -> Backend:
    """These tests run the whole service, so on the real databases only."""
    return database


def rejecting(code_of: Callable[[str], str]) -> Callable[[list[Any]], Awaitable[list[Any]]]:
    """A target answer that rejects every record with ``code_of(hubspot id)``, its message
    echoing a contact value as CRMs do."""

    async def upsert_batch(requests: list[Any]) -> list[Any]:
        return [
            PermanentError(code_of(r.hubspot_id), f"Email: invalid email address: {SECRET_EMAIL}")
            for r in requests
        ]

    return upsert_batch


async def settle(a: Instance, failed: int) -> None:
    deadline = time.monotonic() + WAIT_S * 2
    while (await a.status())["counts"]["failed"] < failed:
        assert time.monotonic() < deadline, "events do not fail"
        await asyncio.sleep(0.05)


async def fail_events(a: Instance, object_ids: range, code_of: Callable[[str], str]) -> None:
    target = a.app.state.ctx.dispatcher.target
    target.upsert_batch = rejecting(code_of)
    try:
        await a.send([_lead(i) for i in object_ids])
        await settle(a, len(object_ids))
    finally:
        del target.upsert_batch


def _lead(object_id: int) -> dict[str, Any]:
    return event(object_id, "lead")


async def test_failures_group_by_code_largest_first_and_replay_takes_the_code(
    tmp_path: Path, backend: Backend
) -> None:
    async with instance(tmp_path, backend) as a:
        await fail_events(a, range(1, 8), lambda i: "INVALID_EMAIL" if int(i) <= 5 else "DUP")
        groups = (await a.get("/admin/health")).json()["groups"]
        assert [(g["code"], g["count"]) for g in groups] == [("INVALID_EMAIL", 5), ("DUP", 2)]
        first = groups[0]
        assert set(first) == {"code", "message", "count", "first_at", "last_at", "sample_event_ids"}
        assert first["sample_event_ids"] == sorted(first["sample_event_ids"], reverse=True)
        assert len(first["sample_event_ids"]) == 5 and first["first_at"] <= first["last_at"]

        answer = await a.http.post(
            a.base + "/admin/replay", headers=AUTH, json={"state": "failed", "error_code": "DUP"}
        )
        assert answer.json() == {"count": 2}
        deadline = time.monotonic() + WAIT_S
        while (await a.status())["counts"]["failed"] != 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        groups = (await a.get("/admin/health")).json()["groups"]
        assert [(g["code"], g["count"]) for g in groups] == [("INVALID_EMAIL", 5)]

        page = (await a.get("/admin/")).text
        assert 'aria-label="failures by error code"' in page
        assert 'href="/admin/events.csv?state=failed&amp;error_code=INVALID_EMAIL"' in page
        replayed = await a.http.post(
            a.base + "/admin/replay-group",
            data={"error_code": "INVALID_EMAIL"},
            headers=AUTH,
            follow_redirects=False,
        )
        assert (replayed.status_code, replayed.headers["location"]) == (303, "/admin/?replayed=5")


async def test_the_csv_export_streams_every_matching_event_in_pages(
    tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failures, "CSV_PAGE", 3)  # several pages from a few events
    async with instance(tmp_path, backend) as a:
        await fail_events(a, range(1, 9), lambda i: "A" if int(i) % 2 else "B")
        await a.send([_lead(100)])
        await a.closed_event(100)
        async with a.http.stream(
            "GET", a.base + "/admin/events.csv?state=failed&error_code=A", headers=AUTH
        ) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/csv")
            body = (await answer.aread()).decode()
        rows = list(csv.reader(io.StringIO(body)))
        assert rows[0] == list(failures.CSV_COLUMNS)
        assert [int(r[3]) for r in rows[1:]] == [7, 5, 3, 1]  # object ids, newest first
        assert {r[1] for r in rows[1:]} == {"failed"} and {r[7] for r in rows[1:]} == {"A"}

        everything = await a.get("/admin/events.csv")
        assert len(list(csv.reader(io.StringIO(everything.text)))) == 1 + 9
        bad = await a.get("/admin/events.csv?state=nope")
        assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
        refused = await a.http.get(a.base + "/admin/events.csv")
        assert refused.status_code == 401


@asynccontextmanager
async def alert_sink(fail_first: int = 0) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback Slack-compatible webhook that records what it receives."""
    received: list[dict[str, Any]] = []
    calls = {"n": 0}

    async def hook(request: Request) -> JSONResponse:
        calls["n"] += 1
        if calls["n"] <= fail_first:
            return JSONResponse({"ok": False}, status_code=500)
        received.append(orjson.loads(await request.body()))
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    async with running_server(app) as base:
        yield f"{base}/hook", received


async def test_a_burst_of_50_failures_makes_one_summed_alert_without_contact_data(
    tmp_path: Path, backend: Backend
) -> None:
    async with (
        alert_sink(fail_first=1) as (url, received),
        instance(tmp_path, backend, alert_webhook_url=url, alert_interval_s=300) as a,
    ):
        alerts = a.app.state.ctx.alerts
        alerts.gather_s = 1.0
        alerts.retry_base_s = 0.05
        await fail_events(a, range(1, 51), lambda i: "INVALID_EMAIL_ADDRESS")
        deadline = time.monotonic() + WAIT_S
        while not received:
            assert time.monotonic() < deadline, "no alert arrived"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # nothing else follows within the interval
        assert len(received) == 1
        text = received[0]["text"]
        assert set(received[0]) == {"text"}
        assert "50 events failed" in text and "INVALID_EMAIL_ADDRESS x50" in text
        assert SECRET_EMAIL not in text and "invalid email address" not in text
        assert url not in text
