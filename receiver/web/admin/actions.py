"""What the admin API and the admin page share: paging, replay, audit lines, the context."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from receiver.models import OPEN_STATES, EventFilter, StoredEvent
from receiver.ops.logging import get_logger
from receiver.store.base import EventStore
from receiver.web.admin.params import MAX_ID, decode_cursor, encode_cursor
from receiver.web.auth import Caller
from receiver.web.context import AppContext
from receiver.web.numbers import parse_uint

log = get_logger("receiver.web.admin")

# Answers name events and contacts: no cache keeps them, no browser guesses their type.
ADMIN_JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def admin_json(response: Response) -> Response:
    """``response`` with :data:`ADMIN_JSON_HEADERS`."""
    response.headers.update(ADMIN_JSON_HEADERS)
    return response


async def page_of(
    store: EventStore, flt: EventFilter, limit: int, cursor: str | None
) -> tuple[list[StoredEvent], str | None]:
    """One page of events, newest first, and the cursor of the next page (None at the end)."""
    events = await store.list_events(flt, limit + 1, decode_cursor(cursor))
    if len(events) <= limit:
        return events, None
    events = events[:limit]
    return events, encode_cursor(events[-1].id)


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


def ctx_of(request: Request) -> AppContext:
    """The app context of a request."""
    ctx: AppContext = request.app.state.ctx
    return ctx


def path_event_id(request: Request) -> int | None:
    """The ``{event_id}`` of the path, or None when it cannot be an event's id."""
    return parse_uint(request.path_params["event_id"], MAX_ID)


def no_event_message(event_id: int | None) -> str:
    """The 404 sentence; the path's text is not echoed when it is no id at all."""
    return "There is no such event." if event_id is None else f"There is no event {event_id}."


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
