"""The admin API: list and show events, replay one or many, behind the admin token.

Listing is newest first, paged by an opaque cursor (the last id seen, encoded). Every
replay, accepted or refused, leaves a ``replay_requested`` audit line naming the caller
by token fingerprint, what was asked and how many events it moved.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver.models import OPEN_STATES, STATES, EventFilter, StoredEvent
from receiver.ops.logging import get_logger
from receiver.ops.presenters import event_json, history_json
from receiver.ops.status import iso
from receiver.store.base import EventStore
from receiver.store.health import STORAGE_UNAVAILABLE, storage_failure
from receiver.web.auth import Caller, authenticate
from receiver.web.context import AppContext
from receiver.web.numbers import MAX_INT64, parse_length, parse_uint
from receiver.web.responses import JSON, error, sentence

log = get_logger("receiver.web.admin.api")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_BODY = 64 * 1024
MAX_ID = MAX_INT64
REPLAYABLE = ("synced", "skipped", "failed")
FILTER_KEYS = ("state", "object_id", "since", "until")
# Answers name events and contacts: no cache keeps them, no browser guesses their type.
ADMIN_JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class BadParam(ValueError):
    """A query parameter or body field is not usable; the message says why."""

    def sentence(self) -> str:
        """The message as a sentence for a person."""
        return sentence(str(self))


# -- parameters ----------------------------------------------------------------------


def parse_time(value: str, name: str) -> float:
    """An ISO-8601 date or date-time (UTC when no offset is given) as unix seconds."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadParam(
            f"'{name}' must be an ISO-8601 date or date-time, like 2024-05-01T12:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        # An offset, or rounding to a float, can carry a valid local time out of
        # datetime's range in UTC, where the audit line and the answers would fail on it
        # after the store had acted: the value must survive the way back.
        seconds = parsed.timestamp()
        datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):
        raise BadParam(f"'{name}' is out of range once converted to UTC") from None
    return seconds


def _parse_id(value: Any, name: str) -> int:
    parsed = parse_uint(value.strip()) if isinstance(value, str) else value
    if type(parsed) is not int or not 0 <= parsed <= MAX_ID:  # bool is no id either
        raise BadParam(f"'{name}' must be an integer from 0 to {MAX_ID}")
    return parsed


def parse_filter(params: Mapping[str, Any]) -> EventFilter:
    """An :class:`EventFilter` from ``state``, ``object_id``, ``since`` and ``until``."""
    state = params.get("state")
    if state is not None and state not in STATES:
        raise BadParam(f"'state' must be one of {', '.join(STATES)}")
    object_id = params.get("object_id")
    since = params.get("since")
    until = params.get("until")
    for name, value in (("since", since), ("until", until)):
        if value is not None and not isinstance(value, str):
            raise BadParam(f"'{name}' must be an ISO-8601 string")
    return EventFilter(
        state=state or None,
        object_id=None if object_id in (None, "") else _parse_id(object_id, "object_id"),
        since=parse_time(since, "since") if since else None,
        until=parse_time(until, "until") if until else None,
    )


def parse_limit(value: str | None) -> int:
    """``limit``: 1 to :data:`MAX_LIMIT`, :data:`DEFAULT_LIMIT` when absent."""
    if value is None or value == "":
        return DEFAULT_LIMIT
    limit = parse_uint(value, MAX_LIMIT)
    if not limit:
        raise BadParam(f"'limit' must be an integer from 1 to {MAX_LIMIT}")
    return limit


def encode_cursor(last_id: int) -> str:
    """The opaque cursor for the page after the event ``last_id``."""
    return base64.urlsafe_b64encode(f"e:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The id a cursor continues below, or None for the first page."""
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    kind, _, number = text.partition(":")
    last_id = parse_uint(number, MAX_ID) if kind == "e" else None
    if last_id is None:
        raise BadParam("'cursor' is not one this service gave out; start again without it")
    return last_id


async def page_of(
    store: EventStore, flt: EventFilter, limit: int, cursor: str | None
) -> tuple[list[StoredEvent], str | None]:
    """One page of events, newest first, and the cursor of the next page (None at the end)."""
    events = await store.list_events(flt, limit + 1, decode_cursor(cursor))
    if len(events) <= limit:
        return events, None
    events = events[:limit]
    return events, encode_cursor(events[-1].id)


def filter_json(flt: EventFilter) -> dict[str, Any]:
    """A filter as the audit log shows it."""
    return {
        "state": flt.state,
        "object_id": flt.object_id,
        "since": iso(flt.since),
        "until": iso(flt.until),
    }


def audit(caller: Caller, what: str, count: int, **details: Any) -> None:
    """One ``replay_requested`` audit line; never the token, only its fingerprint."""
    log.info(
        "replay_requested",
        token_fingerprint=caller.fingerprint,
        auth=caller.via,
        what=what,
        count=count,
        **details,
    )


def admin_json(response: Response) -> Response:
    """``response`` with :data:`ADMIN_JSON_HEADERS`."""
    response.headers.update(ADMIN_JSON_HEADERS)
    return response


def ctx_of(request: Request) -> AppContext:
    """The app context of a request."""
    ctx: AppContext = request.app.state.ctx
    return ctx


# -- handlers ------------------------------------------------------------------------

Handler = Callable[[Request, AppContext, Caller], Awaitable[Response]]


def _api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
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


def path_event_id(request: Request) -> int | None:
    """The ``{event_id}`` of the path, or None when it cannot be an event's id."""
    return parse_uint(request.path_params["event_id"], MAX_ID)


def no_event_message(event_id: int | None) -> str:
    """The 404 sentence; the path's text is not echoed when it is no id at all."""
    return "There is no such event." if event_id is None else f"There is no event {event_id}."


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


async def replay_one(
    ctx: AppContext, caller: Caller, event_id: int, via: str
) -> tuple[int, str | None]:
    """Replay one event: ``(status, reason)``: 202, 404 (unknown) or 409 (refused)."""
    event = await ctx.store.get_event(event_id)
    if event is None:
        return 404, no_event_message(event_id)
    refusals = await ctx.store.replay([event_id], ctx.clock())
    if not refusals:
        audit(caller, "event", 1, event_id=event_id, via=via, previous_state=event.state)
        return 202, None
    reason = refusals[0].reason
    audit(caller, "event", 0, event_id=event_id, via=via, refused=reason)
    if reason == "no such event":  # deleted between the read and the replay
        return 404, no_event_message(event_id)
    return 409, refusal_message(event_id, event.state, reason)


def refusal_message(event_id: int, state: str, reason: str) -> str:
    """Why an event cannot be replayed, for a person."""
    if state in OPEN_STATES:
        return (
            f"Event {event_id} is {state}: it is already queued or being processed,"
            " so there is nothing to replay."
        )
    if state == "invalid":
        return f"Event {event_id} is invalid (malformed), so it cannot be processed."
    return f"Event {event_id} was not replayed: {reason}."


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


async def _json_body(request: Request) -> dict[str, Any]:
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
        raise BadParam(
            'the body must be a JSON object such as {"state": "failed"} ({} replays everything)'
        ) from None
    if not isinstance(doc, dict):
        raise BadParam('the body must be a JSON object such as {"state": "failed"}')
    return doc


async def replay_bulk(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``POST /admin/replay``: every replayable event matching the body's filters."""
    doc = await _json_body(request)
    unknown = sorted(set(doc) - set(FILTER_KEYS))
    if unknown:
        raise BadParam(
            f"unknown field {', '.join(repr(k) for k in unknown)};"
            f" the filters are {', '.join(FILTER_KEYS)}"
        )
    flt = parse_filter({k: v for k, v in doc.items() if v is not None})
    if flt.state is not None and flt.state not in REPLAYABLE:
        return error(
            409,
            "not_replayable",
            f"Events in state {flt.state} cannot be replayed: pending and retrying events are"
            " already queued and invalid ones cannot be processed.",
        )
    count = await ctx.store.replay_matching(flt, ctx.clock())
    audit(caller, "filter", count, filter=filter_json(flt), via="api")
    return JSON({"count": count})


def admin_routes() -> list[BaseRoute]:
    """Routes under ``/admin``: the JSON API and the event-log page."""
    from receiver.web.admin.page import page_routes

    return [
        Route("/admin/events", _api(list_events), methods=["GET"]),
        Route("/admin/events/{event_id}", _api(show_event), methods=["GET"]),
        Route("/admin/events/{event_id}/replay", _api(replay_event), methods=["POST"]),
        Route("/admin/replay", _api(replay_bulk), methods=["POST"]),
        *page_routes(),
    ]
