"""The admin API: list and show events, replay one or many, behind the admin token.

Listing is newest first, paged by an opaque cursor (the last id seen, encoded). Every
replay, accepted or refused, leaves a ``replay_requested`` audit line naming the caller
by token fingerprint, what was asked and how many events it moved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver.models import REPLAYABLE_STATES
from receiver.ops.logging import get_logger
from receiver.ops.presenters import event_json, history_json
from receiver.store.health import STORAGE_UNAVAILABLE, storage_failure
from receiver.web.admin.actions import (
    admin_json,
    audit,
    ctx_of,
    no_event_message,
    page_of,
    path_event_id,
    replay_one,
)
from receiver.web.admin.params import FILTER_KEYS, BadParam, filter_json, parse_filter, parse_limit
from receiver.web.auth import Caller, authenticate
from receiver.web.context import AppContext
from receiver.web.numbers import parse_length
from receiver.web.responses import JSON, error

log = get_logger("receiver.web.admin.api")

MAX_BODY = 64 * 1024


# -- handlers ------------------------------------------------------------------------

Handler = Callable[[Request, AppContext, Caller], Awaitable[Response]]


def api_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Bearer-only authentication (no cookie, so no CSRF surface) and 400s for bad input."""

    async def endpoint(request: Request) -> Response:
        return admin_json(await answer(request))

    async def answer(request: Request) -> Response:
        ctx = ctx_of(request)
        caller = authenticate(request, ctx.settings, ctx.clock(), allow_cookie=False)
        if isinstance(caller, Response):
            return caller
        try:
            return await handler(request, ctx, caller)
        except BadParam as exc:
            return error(400, "bad_request", exc.sentence())
        except Exception as exc:
            if not storage_failure(exc):
                raise  # a bug: the app's handler answers the JSON 500
            log.exception("admin_storage_failed", path=request.url.path)
            return error(503, "storage_unavailable", STORAGE_UNAVAILABLE)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def list_events(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/events``: filtered, newest first, with ``next_cursor``."""
    q = request.query_params
    flt = parse_filter(q)
    events, next_cursor = await page_of(
        ctx.store, flt, parse_limit(q.get("limit")), q.get("cursor")
    )
    return JSON({"events": [event_json(e) for e in events], "next_cursor": next_cursor})


async def show_event(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/events/{id}``: the whole event with its history."""
    event_id = path_event_id(request)
    event = await ctx.store.get_event(event_id) if event_id is not None else None
    if event is None:
        return error(404, "not_found", no_event_message(event_id))
    doc = event_json(event)
    doc["history"] = history_json(await ctx.store.history(event.id))
    return JSON(doc)


async def replay_event(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``POST /admin/events/{id}/replay``: back to ``pending``; 202, 404 or 409."""
    event_id = path_event_id(request)
    if event_id is None:
        return error(404, "not_found", no_event_message(None))
    status, message = await replay_one(ctx, caller, event_id, "api")
    if status == 404:
        return error(404, "not_found", message or "")
    if status == 409:
        return error(409, "not_replayable", message or "")
    event = await ctx.store.get_event(event_id)
    body = event_json(event) if event is not None else {"id": event_id, "state": "pending"}
    return JSON(body, status_code=202)


async def json_body(request: Request, example: str = '{"state": "failed"}') -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body); ``example`` shows a good one
    in the error for anything else."""
    declared = request.headers.get("content-length")
    if declared is not None and (parse_length(declared) or 0) > MAX_BODY:
        raise BadParam(f"the body must be at most {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadParam(f"the body must be at most {MAX_BODY} bytes")
    try:
        doc = orjson.loads(body) if body.strip() else {}  # every filter is optional
    except orjson.JSONDecodeError:
        raise BadParam(f"the body must be a JSON object such as {example}") from None
    if not isinstance(doc, dict):
        raise BadParam(f"the body must be a JSON object such as {example}")
    return doc


async def replay_bulk(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``POST /admin/replay``: every replayable event matching the body's filters."""
    doc = await json_body(request, '{"state": "failed"} ({} replays everything)')
    unknown = sorted(set(doc) - set(FILTER_KEYS))
    if unknown:
        raise BadParam(
            f"unknown field {', '.join(repr(k) for k in unknown)};"
            f" the filters are {', '.join(FILTER_KEYS)}"
        )
    flt = parse_filter({k: v for k, v in doc.items() if v is not None})
    if flt.state is not None and flt.state not in REPLAYABLE_STATES:
        return error(
            409,
            "not_replayable",
            f"Events in state {flt.state} cannot be replayed: pending and retrying events are"
            " already queued and invalid ones cannot be processed.",
        )
    count = await ctx.store.replay_matching(flt, ctx.clock())
    audit(caller, "filter", count, filter=filter_json(flt), via="api")
    return JSON({"count": count})


def api_routes() -> list[BaseRoute]:
    """The JSON API's routes under ``/admin``."""
    return [
        Route("/admin/events", api_endpoint(list_events), methods=["GET"]),
        Route("/admin/events/{event_id}", api_endpoint(show_event), methods=["GET"]),
        Route("/admin/events/{event_id}/replay", api_endpoint(replay_event), methods=["POST"]),
        Route("/admin/replay", api_endpoint(replay_bulk), methods=["POST"]),
    ]
