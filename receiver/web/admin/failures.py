"""Sync health for the admin API: failures grouped by error code, and a CSV export.

``GET /admin/health`` answers the failed events grouped by error code, largest first.
``GET /admin/events.csv`` streams the events ``/admin/events`` would list (same filters),
read :data:`CSV_PAGE` at a time, so an export of 100,000 events never sits in memory.
The CSV also takes the page's session cookie, so the page can link to it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from receiver.models import EventFilter, StoredEvent
from receiver.ops.logging import get_logger
from receiver.ops.presenters import iso
from receiver.store.base import EventStore
from receiver.web.admin.actions import ctx_of
from receiver.web.admin.api import api_endpoint
from receiver.web.admin.params import BadParam, parse_filter
from receiver.web.auth import Caller, authenticate
from receiver.web.context import AppContext
from receiver.web.responses import JSON, error

log = get_logger("receiver.web.admin.failures")

CSV_PAGE = 1000
SAMPLES = 5
CSV_COLUMNS = (
    "id",
    "state",
    "reason",
    "object_id",
    "subscription_type",
    "stage",
    "attempts",
    "error_code",
    "error_message",
    "received_at",
    "updated_at",
    "target_kind",
    "target_id",
)


async def failure_groups_json(store: EventStore) -> list[dict[str, Any]]:
    """The groups as ``GET /admin/health`` shows them."""
    return [
        {
            "code": g.code,
            "message": g.message,
            "count": g.count,
            "first_at": iso(g.first_at),
            "last_at": iso(g.last_at),
            "sample_event_ids": list(g.sample_event_ids),
        }
        for g in await store.failure_groups(SAMPLES)
    ]


async def health(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/health``: failures grouped by error code, largest first."""
    return JSON({"groups": await failure_groups_json(ctx.store)})


def csv_row(event: StoredEvent) -> list[Any]:
    """One event as a CSV row, in :data:`CSV_COLUMNS` order."""
    return [
        event.id,
        event.state,
        event.reason or "",
        "" if event.object_id is None else event.object_id,
        event.subscription_type or "",
        event.stage or "",
        event.attempts,
        event.last_error_code or "",
        event.last_error_message or "",
        iso(event.received_at),
        iso(event.updated_at),
        event.target_kind or "",
        event.target_id or "",
    ]


async def csv_lines(store: EventStore, flt: EventFilter) -> AsyncIterator[str]:
    """The header, then every matching event newest first, a page of rows at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    before: int | None = None
    while True:
        try:
            events = await store.list_events(flt, CSV_PAGE, before)
        except Exception:
            # The answer has started: all that can be done is to end it short.
            log.exception("csv_export_failed", after_id=before)
            return
        for event in events:
            writer.writerow(csv_row(event))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(events) < CSV_PAGE:
            return
        before = events[-1].id


async def events_csv(request: Request) -> Response:
    """``GET /admin/events.csv``: the filtered events as CSV, streamed."""
    ctx = ctx_of(request)
    caller = authenticate(request, ctx.settings, ctx.clock(), allow_cookie=True)
    if not isinstance(caller, Caller):
        return caller
    try:
        flt = parse_filter(request.query_params)
    except BadParam as exc:
        return error(400, "bad_request", exc.sentence())
    name = f"stagesync-events-{flt.state or 'all'}.csv"
    return StreamingResponse(
        csv_lines(ctx.store, flt),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def routes() -> list[BaseRoute]:
    """The sync health routes."""
    return [
        Route("/admin/health", api_endpoint(health), methods=["GET"]),
        Route("/admin/events.csv", events_csv, methods=["GET"]),
    ]
