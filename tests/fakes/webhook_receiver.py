"""A fake webhook receiver: verifies Standard Webhooks signatures and keeps what it got.

It verifies each POST with the ``standardwebhooks`` package (a wrong signature answers
``401``), drops a repeated ``webhook-id`` as the specification advises receivers to
(answering ``200``), and applies ``contact.upsert`` (fields merged into the record of
that kind) and ``contact.delete`` (``404`` when it holds no such record).

Switches: ``failure`` = ``"rate_limit"`` (``429`` with ``Retry-After``),
``"unavailable"`` (``503``) or ``"hang"`` (answers after ``hang_s``); ``reject(id)``
answers that contact's POSTs ``422`` with a JSON body.

Run it with ``tests.support.servers.running_server(fake.app)``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

#: "whsec_" and 32 bytes of base64.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwdGVzdGtleQ=="
PATH = "/hooks/stagesync"


@dataclass
class Delivery:
    """One verified POST."""

    message_id: str
    timestamp: str
    payload: dict[str, Any]


@dataclass
class FakeWebhookReceiver:
    """State and switches of one receiver; ``app`` serves it."""

    secret: str = SECRET
    latency_s: float = 0.0
    failure: str | None = None  # rate_limit | unavailable | hang
    retry_after: str = "1"
    hang_s: float = 3.0
    #: (kind, hubspot id) -> fields
    records: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    message_ids: Counter[str] = field(default_factory=Counter)
    #: (webhook-id, payload) of every correctly signed POST, refused ones included
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    peak: int = 0

    def __post_init__(self) -> None:
        self._verifier = Webhook(self.secret)
        self.app = Starlette(routes=[Route(PATH, self._receive, methods=["POST"])])

    def reject(self, hubspot_id: str, message: str = "email domain is blocked") -> None:
        """Answer this contact's POSTs ``422`` with ``message`` in a JSON body."""
        self.rejected[str(hubspot_id)] = message

    def record(self, kind: str, hubspot_id: str) -> dict[str, Any] | None:
        """The fields held for one kind and HubSpot id, if any."""
        return self.records.get((kind, str(hubspot_id)))

    async def _receive(self, request: Request) -> Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        await asyncio.sleep(self.latency_s)
        body = await request.body()
        self.calls["post"] += 1
        try:
            payload = self._verifier.verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.calls["bad_signature"] += 1
            return JSONResponse({"error": str(exc)}, status_code=401)
        self.received.append((request.headers["webhook-id"], payload))
        if self.failure == "hang":
            await asyncio.sleep(self.hang_s)
        if self.failure == "rate_limit":
            self.calls["refused"] += 1
            return JSONResponse(
                {"error": "slow down"}, status_code=429, headers={"Retry-After": self.retry_after}
            )
        if self.failure == "unavailable":
            self.calls["refused"] += 1
            return JSONResponse({"error": "maintenance"}, status_code=503)
        message_id = request.headers["webhook-id"]
        self.message_ids[message_id] += 1
        if self.message_ids[message_id] > 1:
            self.calls["repeat"] += 1
            return JSONResponse({"status": "duplicate"})
        hubspot_id = str(payload["hubspot_id"])
        if hubspot_id in self.rejected:
            del self.message_ids[message_id]  # not applied: a replay may come again
            self.calls["rejected"] += 1
            return JSONResponse(
                {"error": "invalid_contact", "message": self.rejected[hubspot_id]}, status_code=422
            )
        self.deliveries.append(Delivery(message_id, request.headers["webhook-timestamp"], payload))
        key = (str(payload["kind"]), hubspot_id)
        if payload["type"] == "contact.delete":
            self.calls["delete"] += 1
            if self.records.pop(key, None) is None:
                return JSONResponse({"error": "not_found"}, status_code=404)
            return Response(status_code=204)
        self.calls["upsert"] += 1
        created = key not in self.records
        self.records[key] = {**self.records.get(key, {}), **payload["fields"]}
        return JSONResponse({"id": f"{key[0]}-{hubspot_id}"}, status_code=201 if created else 200)
