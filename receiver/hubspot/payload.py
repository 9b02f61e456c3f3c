"""Webhook payload models and the parsing of one batch into storable events.

Parsing is pydantic at the edge: each event is validated on its own, so one malformed
event becomes an ``invalid`` row with its validation error while the rest of a signed
batch is accepted. The duplicate key follows the SPEC: two events are the same when
``portalId``, ``subscriptionType``, ``eventId``, ``objectId``, ``occurredAt``,
``propertyName`` and ``propertyValue`` are all equal (``attemptNumber`` is left out, as
HubSpot raises it on a retried delivery).

Speed: a well-formed HubSpot event (every field under its usual name, with exactly the
type the model wants) skips pydantic and is checked by :func:`_fast_fields`, which
accepts a subset of what the model accepts and yields the same values. Anything else,
including every malformed event, goes through the model, so errors read the same.

The duplicate key starts with ``occurredAt`` (8 bytes, big-endian) before a 16-byte hash
of the seven fields. Equal events still get equal keys, and new events land together
at the end of the unique index instead of on a random page each, which keeps the
per-commit write volume small as the table grows.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Annotated, Any

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, ValidationError

from receiver.models import NewEvent
from receiver.ops.nesting import MAX_EVENT_DEPTH, cut_to, deeper_than

LIFECYCLE_STAGE = "lifecyclestage"
MERGE = "contact.merge"
# Integers the stores keep in a column must fit a signed 64-bit integer (SQLite INTEGER,
# PostgreSQL bigint); larger ones make the event invalid instead of failing the commit.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
KEY_LENGTH = 24  # 8 bytes of occurredAt, 16 of hash
_INVALID_PREFIX = bytes(8)
TOO_DEEP = (
    f"the event nests more than {MAX_EVENT_DEPTH} levels deep (HubSpot's events are flat);"
    f" it is stored cut to {MAX_EVENT_DEPTH} levels"
)
# What orjson cannot write back out is stored as this, and invalid.
UNWRITABLE = "the event cannot be written back out as JSON"
UNWRITABLE_RAW = orjson.dumps({"stagesync": UNWRITABLE})
# Large batches are validated in slices, the event loop handed back between them.
YIELD_AFTER_S = 0.002
SLICE = 32

Int64 = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]


class BadBatch(ValueError):
    """The body is not a JSON array of objects (answered 400)."""


class WebhookEvent(BaseModel):
    """One HubSpot contact webhook event, as far as stagesync reads it."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    object_id: Int64 = Field(alias="objectId")
    subscription_type: str = Field(
        validation_alias=AliasChoices("subscriptionType", "eventType"), min_length=1
    )
    event_id: StrictInt | str = Field(alias="eventId")
    portal_id: StrictInt = Field(alias="portalId")
    occurred_at: Int64 = Field(alias="occurredAt")
    property_name: str | None = Field(None, alias="propertyName")
    property_value: str | int | float | bool | None = Field(None, alias="propertyValue")
    attempt_number: int = Field(0, alias="attemptNumber")
    primary_object_id: Int64 | None = Field(None, alias="primaryObjectId")

    @property
    def contact_id(self) -> int:
        """The contact this event is about: the surviving contact for a merge."""
        if self.subscription_type == MERGE and self.primary_object_id is not None:
            return self.primary_object_id
        return self.object_id

    @property
    def stage(self) -> str | None:
        """The lifecycle stage this event carries, if it is a lifecycle stage change."""
        if self.property_name == LIFECYCLE_STAGE and self.property_value is not None:
            return str(self.property_value)
        return None


def parse_body(body: bytes) -> list[dict[str, Any]]:
    """Parse a webhook body; raises :class:`BadBatch` unless it is an array of objects."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadBatch("the body is not valid JSON") from None
    if type(data) is not list:
        raise BadBatch("the body must be a JSON array of events")
    for item in data:
        if type(item) is not dict:
            raise BadBatch("every element of the array must be a JSON object")
    return data


def _key(occurred_at: int, ident: bytes) -> bytes:
    return (
        occurred_at.to_bytes(8, "big", signed=True)
        + hashlib.blake2b(ident, digest_size=16).digest()
    )


def _short_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


_validate = WebhookEvent.model_validate
# Exactly what the model keeps as it is (StrictInt refuses bool, a subclass of int).
_VALUE_TYPES = frozenset((str, int, float, bool, type(None)))


def _fast_fields(item: dict[str, Any]) -> tuple[Any, ...] | None:
    """The model's fields for a well-formed event, or None to let pydantic decide.

    Returns ``(object_id, subscription_type, event_id, portal_id, occurred_at,
    property_name, property_value, primary_object_id)``. Every check is on the exact
    type, so whatever passes, the model accepts unchanged.
    """
    get = item.get
    object_id = get("objectId")
    subscription_type = get("subscriptionType")
    event_id = get("eventId")
    portal_id = get("portalId")
    occurred_at = get("occurredAt")
    if not (
        type(object_id) is int
        and type(subscription_type) is str
        and subscription_type
        and type(portal_id) is int
        and type(occurred_at) is int
        and (type(event_id) is int or type(event_id) is str)
        and INT64_MIN <= object_id <= INT64_MAX
        and INT64_MIN <= occurred_at <= INT64_MAX
    ):
        return None
    property_name = get("propertyName")
    property_value = get("propertyValue")
    attempt = get("attemptNumber", 0)
    primary = get("primaryObjectId")
    if (
        (property_name is not None and type(property_name) is not str)
        or type(property_value) not in _VALUE_TYPES
        or type(attempt) is not int
        or (
            primary is not None
            and (type(primary) is not int or not INT64_MIN <= primary <= INT64_MAX)
        )
    ):
        return None
    return (
        object_id,
        subscription_type,
        event_id,
        portal_id,
        occurred_at,
        property_name,
        property_value,
        primary,
    )


def _invalid(raw: bytes, error: str) -> NewEvent:
    return NewEvent(
        dedup_key=_INVALID_PREFIX + hashlib.blake2b(b"invalid:" + raw, digest_size=16).digest(),
        raw=raw,
        object_id=None,
        subscription_type=None,
        occurred_at=None,
        stage=None,
        invalid_error=error,
    )


def to_new_event(item: dict[str, Any]) -> NewEvent:
    """Validate one raw event; a malformed one comes back with ``invalid_error`` set."""
    try:
        raw = orjson.dumps(item)
    except orjson.JSONEncodeError:  # orjson writes 254 levels (it reads 1,024)
        if deeper_than(item, MAX_EVENT_DEPTH):
            return _invalid(orjson.dumps(cut_to(item, MAX_EVENT_DEPTH)), TOO_DEEP)
        return _invalid(UNWRITABLE_RAW, UNWRITABLE)  # nothing orjson.loads gives
    # A byte search first: a flat event, HubSpot's kind, has no bracket past its first.
    if (raw.find(b"{", 1) != -1 or raw.find(b"[") != -1) and deeper_than(item, MAX_EVENT_DEPTH):
        return _invalid(orjson.dumps(cut_to(item, MAX_EVENT_DEPTH)), TOO_DEEP)
    fields = _fast_fields(item)
    if fields is None:
        try:
            event = _validate(item)
        except ValidationError as exc:
            return _invalid(raw, _short_error(exc))
        fields = (
            event.object_id,
            event.subscription_type,
            event.event_id,
            event.portal_id,
            event.occurred_at,
            event.property_name,
            event.property_value,
            event.primary_object_id,
        )
    object_id, sub_type, event_id, portal_id, occurred_at, name, value, primary = fields
    ident = orjson.dumps([portal_id, sub_type, event_id, object_id, occurred_at, name, value])
    return NewEvent(
        dedup_key=_key(occurred_at, ident),
        raw=raw,
        object_id=primary if sub_type == MERGE and primary is not None else object_id,
        subscription_type=sub_type,
        occurred_at=occurred_at,
        stage=str(value) if name == LIFECYCLE_STAGE and value is not None else None,
    )


def to_new_events(items: list[dict[str, Any]]) -> list[NewEvent]:
    """Validate each raw event; malformed ones come back with ``invalid_error`` set."""
    return [to_new_event(item) for item in items]


async def to_new_events_yielding(
    items: list[dict[str, Any]], budget_s: float = YIELD_AFTER_S
) -> list[NewEvent]:
    """:func:`to_new_events`, handing the event loop back every ``budget_s`` seconds.

    A malformed event goes through pydantic and costs tens of microseconds: a large
    batch of them, validated in one go, would hold every other request of the process
    for seconds. Well-formed batches of ordinary size finish within one slice.
    """
    out: list[NewEvent] = []
    convert = to_new_event
    clock = time.perf_counter
    start = clock()
    for begin in range(0, len(items), SLICE):
        out.extend([convert(item) for item in items[begin : begin + SLICE]])
        if clock() - start > budget_s:
            await asyncio.sleep(0)
            start = clock()
    return out
