"""``stagesync send-sample``: a correctly signed sample batch, for trying the service."""

from __future__ import annotations

import random
import sys
import time

import httpx
import orjson

from receiver.hubspot.signature import sign_v3


def sample_batch(object_id: int, stage: str, now_ms: int) -> list[dict[str, object]]:
    """A creation event and a lifecycle stage change for one contact."""
    base = {"portalId": 62515, "appId": 1160452, "objectId": object_id, "changeSource": "CRM"}
    return [
        {
            **base,
            "eventId": random.randrange(1, 2**31),
            "subscriptionId": 4064,
            "occurredAt": now_ms - 1000,
            "subscriptionType": "contact.creation",
            "attemptNumber": 0,
        },
        {
            **base,
            "eventId": random.randrange(1, 2**31),
            "subscriptionId": 4065,
            "occurredAt": now_ms,
            "subscriptionType": "contact.propertyChange",
            "propertyName": "lifecyclestage",
            "propertyValue": stage,
            "attemptNumber": 0,
        },
    ]


def send_sample(url: str, secret: str, stage: str, object_id: int | None) -> int:
    """POST a v3-signed sample batch to ``url``; prints the answer."""
    now_ms = int(time.time() * 1000)
    contact = object_id if object_id is not None else random.randrange(100_000, 999_999)
    body = orjson.dumps(sample_batch(contact, stage, now_ms))
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, body, now_ms),
        "X-HubSpot-Request-Timestamp": str(now_ms),
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"could not reach {url}: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"contact {contact}, stage {stage!r}: {response.status_code} {response.text}")
    return 0 if response.status_code == 200 else 1
