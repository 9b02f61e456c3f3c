"""Webhook payload models and the parsing of one batch into storable events.

Parsing is pydantic at the edge: each event is validated on its own, so one malformed
event becomes an ``invalid`` row with its validation error while the rest of a signed
batch is accepted. The duplicate key follows the SPEC: two events are the same when
``portalId``, ``subscriptionType``, ``eventId``, ``objectId``, ``occurredAt``,
``propertyName`` and ``propertyValue`` are all equal (``attemptNumber`` is left out, as
HubSpot raises it on a retried delivery).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, ValidationError

from receiver.models import NewEvent

LIFECYCLE_STAGE = "lifecyclestage"


class BadBatch(ValueError):
    """The body is not a JSON array of objects (answered 400)."""


class WebhookEvent(BaseModel):
    """One HubSpot contact webhook event, as far as stagesync reads it."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    object_id: StrictInt = Field(alias="objectId")
    subscription_type: str = Field(
        validation_alias=AliasChoices("subscriptionType", "eventType"), min_length=1
    )
    event_id: StrictInt | str = Field(alias="eventId")
    portal_id: StrictInt = Field(alias="portalId")
    occurred_at: StrictInt = Field(alias="occurredAt")
    property_name: str | None = Field(None, alias="propertyName")
    property_value: str | int | float | bool | None = Field(None, alias="propertyValue")
    attempt_number: int = Field(0, alias="attemptNumber")
    primary_object_id: StrictInt | None = Field(None, alias="primaryObjectId")

    @property
    def contact_id(self) -> int:
        """The contact this event is about: the surviving contact for a merge."""
        if self.subscription_type == "contact.merge" and self.primary_object_id is not None:
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
    if not isinstance(data, list):
        raise BadBatch("the body must be a JSON array of events")
    for item in data:
        if not isinstance(item, dict):
            raise BadBatch("every element of the array must be a JSON object")
    return data


def _dedup_key(event: WebhookEvent) -> bytes:
    ident = orjson.dumps(
        [
            event.portal_id,
            event.subscription_type,
            event.event_id,
            event.object_id,
            event.occurred_at,
            event.property_name,
            event.property_value,
        ]
    )
    return hashlib.blake2b(ident, digest_size=16).digest()


def _short_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


_validate = WebhookEvent.model_validate


def to_new_events(items: list[dict[str, Any]]) -> list[NewEvent]:
    """Validate each raw event; malformed ones come back with ``invalid_error`` set."""
    out = []
    for item in items:
        raw = orjson.dumps(item)
        try:
            event = _validate(item)
        except ValidationError as exc:
            out.append(
                NewEvent(
                    dedup_key=hashlib.blake2b(b"invalid:" + raw, digest_size=16).digest(),
                    raw=raw,
                    object_id=None,
                    subscription_type=None,
                    occurred_at=None,
                    stage=None,
                    invalid_error=_short_error(exc),
                )
            )
            continue
        out.append(
            NewEvent(
                dedup_key=_dedup_key(event),
                raw=raw,
                object_id=event.contact_id,
                subscription_type=event.subscription_type,
                occurred_at=event.occurred_at,
                stage=event.stage,
            )
        )
    return out
