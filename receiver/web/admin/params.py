"""Reading the admin API's, the page's and the CLI's filters, limits, times and cursors.

Pure parsing, shared by the HTTP admin and the command line: a bad value raises
:class:`BadParam` with a sentence for a person.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from receiver.models import STATES, EventFilter
from receiver.ops.presenters import iso
from receiver.web.numbers import MAX_INT64, parse_uint
from receiver.web.responses import sentence

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_ID = MAX_INT64
FILTER_KEYS = ("state", "object_id", "since", "until", "error_code")


class BadParam(ValueError):
    """A query parameter or body field is not usable; the message says why."""

    def sentence(self) -> str:
        """The message as a sentence for a person."""
        return sentence(str(self))


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
    """An :class:`EventFilter` from ``state``, ``object_id``, ``since``, ``until`` and
    ``error_code``."""
    state = params.get("state")
    if state is not None and state not in STATES:
        raise BadParam(f"'state' must be one of {', '.join(STATES)}")
    object_id = params.get("object_id")
    since = params.get("since")
    until = params.get("until")
    error_code = params.get("error_code")
    if error_code is not None and (not isinstance(error_code, str) or len(error_code) > 200):
        raise BadParam("'error_code' must be an error code such as INVALID_FIELD")
    for name, value in (("since", since), ("until", until)):
        if value is not None and not isinstance(value, str):
            raise BadParam(f"'{name}' must be an ISO-8601 string")
    return EventFilter(
        state=state or None,
        object_id=None if object_id in (None, "") else _parse_id(object_id, "object_id"),
        since=parse_time(since, "since") if since else None,
        until=parse_time(until, "until") if until else None,
        error_code=error_code or None,
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


def filter_json(flt: EventFilter) -> dict[str, Any]:
    """A filter as the audit log shows it."""
    return {
        "state": flt.state,
        "object_id": flt.object_id,
        "since": iso(flt.since),
        "until": iso(flt.until),
        "error_code": flt.error_code,
    }
