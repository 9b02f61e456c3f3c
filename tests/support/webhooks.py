"""Build and sign HubSpot webhook batches for tests."""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson

from receiver.hubspot.signature import sign_v3

_ids = itertools.count(1_000_000)


def event(
    object_id: int,
    stage: str | None = None,
    *,
    subscription_type: str = "contact.propertyChange",
    occurred_at: int | None = None,
    property_name: str | None = None,
    property_value: str | None = None,
    event_id: int | None = None,
    attempt: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """One HubSpot contact event; ``stage`` makes it a lifecycle stage change."""
    body: dict[str, Any] = {
        "objectId": object_id,
        "eventId": event_id if event_id is not None else next(_ids),
        "subscriptionId": 4065,
        "portalId": 62515,
        "appId": 1160452,
        "occurredAt": occurred_at if occurred_at is not None else int(time.time() * 1000),
        "subscriptionType": subscription_type,
        "attemptNumber": attempt,
        "changeSource": "CRM",
    }
    if stage is not None:
        body["propertyName"] = "lifecyclestage"
        body["propertyValue"] = stage
    elif property_name is not None:
        body["propertyName"] = property_name
        body["propertyValue"] = property_value
    body.update(extra)
    return body


def signed(
    url: str, events: list[dict[str, Any]] | bytes, secret: str, now_ms: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and v3 headers for a POST of ``events`` to ``url``."""
    body = events if isinstance(events, bytes) else orjson.dumps(events)
    ts = now_ms if now_ms is not None else int(time.time() * 1000)
    return body, {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, body, ts),
        "X-HubSpot-Request-Timestamp": str(ts),
    }
