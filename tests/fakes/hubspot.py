"""A fake HubSpot CRM v3 contacts API, as a Starlette app, for tests over real HTTP.

It answers with HubSpot's real status codes, bodies and headers, as documented and as
reported by users: batch read answers ``200``, or ``207`` with an ``OBJECT_NOT_FOUND``
error listing the missing ids; a rate limit is a ``429`` with ``errorType``
``RATE_LIMIT`` and a ``policyName``; a wrong token is a ``401`` with category
``INVALID_AUTHENTICATION``. Failures are switched on by tests and counted down.

Run it with ``tests.support.servers.running_server(fake.app)``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DEFAULT_TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
MAX_INPUTS = 100
DAILY_LIMIT = 250_000
NOT_FOUND_MESSAGE = (
    "Could not get some CONTACT objects, they may be deleted or not exist. "
    "Check that ids are valid."
)
AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication "
    "and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
ALWAYS = -1  # a failure switch set to this stays on until cleared


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(message: str, **extra: Any) -> dict[str, Any]:
    return {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), **extra}


@dataclass
class FakeHubSpot:
    """State and switches of one fake HubSpot portal; ``app`` serves it."""

    token: str = DEFAULT_TOKEN
    contacts: dict[int, dict[str, str]] = field(default_factory=dict)
    archived: set[int] = field(default_factory=set)
    latency_s: float = 0.0
    #: ten-second budget the fake enforces for real (rolling window); None: no limit
    limit_per_10s: int | None = None
    #: switches: how many more answers fail this way (ALWAYS: until cleared)
    ten_secondly_429: int = 0
    daily_429: int = 0
    server_error: int = 0
    server_error_status: int = 503
    #: sent as ``Retry-After`` on 429 and 5xx answers when set
    retry_after: str | None = None
    #: counters, for assertions
    batch_read_calls: int = 0
    single_read_calls: int = 0
    ids_per_call: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    #: the ``lifecyclestage`` property's options, as HubSpot lists them (custom ones too)
    stage_options: list[dict[str, Any]] = field(default_factory=lambda: default_stage_options())
    property_reads: int = 0
    _window: deque[float] = field(init=False, default_factory=deque)
    app: Starlette = field(init=False)

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/crm/v3/objects/contacts/batch/read", self._batch_read, methods=["POST"]),
                Route("/crm/v3/objects/contacts/{object_id}", self._read_one, methods=["GET"]),
                Route(
                    "/crm/v3/properties/contacts/lifecyclestage",
                    self._stage_property,
                    methods=["GET"],
                ),
            ]
        )

    def clear_failures(self) -> None:
        """Turn every failure switch off."""
        self.ten_secondly_429 = self.daily_429 = self.server_error = 0
        self.retry_after = None

    # -- request handling --------------------------------------------------------

    async def _batch_read(self, request: Request) -> JSONResponse:
        self.batch_read_calls += 1
        try:
            body = await request.json()
        except ValueError:
            body = None
        inputs = body.get("inputs") if isinstance(body, dict) else None
        self.bodies.append(body if isinstance(body, dict) else {})
        self.ids_per_call.append(len(inputs) if isinstance(inputs, list) else 0)
        refused = await self._gate(request)
        if refused is not None:
            return refused
        if not isinstance(body, dict) or not isinstance(inputs, list):
            return self._answer(400, _error("Invalid input JSON", category="VALIDATION_ERROR"))
        if len(inputs) > MAX_INPUTS:
            message = f"Batch input limit is {MAX_INPUTS} inputs, got {len(inputs)}"
            return self._answer(400, _error(message, category="VALIDATION_ERROR"))
        wanted = [str(p) for p in body.get("properties") or []]
        started = _now_iso()
        results: list[dict[str, Any]] = []
        missing: list[str] = []
        for item in inputs:
            raw_id = str(item.get("id")) if isinstance(item, dict) else ""
            contact = self._live_contact(raw_id)
            if contact is None:
                missing.append(raw_id)
            else:
                results.append(self._object(int(raw_id), contact, wanted))
        payload: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _now_iso(),
        }
        if not missing:
            return self._answer(200, payload)
        payload["numErrors"] = 1
        payload["errors"] = [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": NOT_FOUND_MESSAGE,
                "context": {"ids": missing},
            }
        ]
        return self._answer(207, payload)

    async def _read_one(self, request: Request) -> JSONResponse:
        self.single_read_calls += 1
        refused = await self._gate(request)
        if refused is not None:
            return refused
        raw_id = request.path_params["object_id"]
        contact = self._live_contact(raw_id)
        if contact is None:
            return self._answer(404, _error("resource not found", category="OBJECT_NOT_FOUND"))
        wanted = [p for v in request.query_params.getlist("properties") for p in v.split(",") if p]
        return self._answer(200, self._object(int(raw_id), contact, wanted))

    async def _stage_property(self, request: Request) -> JSONResponse:
        self.property_reads += 1
        refused = await self._gate(request)
        if refused is not None:
            return refused
        return self._answer(
            200,
            {
                "name": "lifecyclestage",
                "label": "Lifecycle Stage",
                "type": "enumeration",
                "fieldType": "radio",
                "groupName": "contactinformation",
                "options": self.stage_options,
                "calculated": False,
                "hasUniqueValue": False,
                "hidden": False,
                "formField": True,
            },
        )

    async def _gate(self, request: Request) -> JSONResponse | None:
        """Latency, then auth, then injected failures, then the real rolling limit."""
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self._answer(401, _error(AUTH_MESSAGE, category="INVALID_AUTHENTICATION"))
        if self._take("daily_429"):
            return self._rate_limited("DAILY", "You have reached your daily limit.")
        if self._take("ten_secondly_429"):
            return self._ten_secondly()
        if self._take("server_error"):
            status = self.server_error_status
            body = _error("internal error", category="INTERNAL_ERROR")
            return self._answer(status, body, self._retry_headers())
        if self.limit_per_10s is not None:
            now = time.monotonic()
            while self._window and self._window[0] <= now - 10.0:
                self._window.popleft()
            if len(self._window) >= self.limit_per_10s:
                return self._ten_secondly()
            self._window.append(now)
        return None

    def _take(self, switch: str) -> bool:
        left: int = getattr(self, switch)
        if left == 0:
            return False
        if left > 0:
            setattr(self, switch, left - 1)
        return True

    def _ten_secondly(self) -> JSONResponse:
        return self._rate_limited(
            "TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit."
        )

    def _rate_limited(self, policy: str, message: str) -> JSONResponse:
        body = _error(
            message,
            errorType="RATE_LIMIT",
            policyName=policy,
            requestId=str(uuid.uuid4()),
        )
        return self._answer(429, body, self._retry_headers())

    def _retry_headers(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after} if self.retry_after is not None else {}

    def _live_contact(self, raw_id: str) -> dict[str, str] | None:
        if not raw_id.isdigit():
            return None
        object_id = int(raw_id)
        if object_id in self.archived:
            return None
        return self.contacts.get(object_id)

    def _object(self, object_id: int, contact: dict[str, str], wanted: list[str]) -> dict[str, Any]:
        stamp = "2024-01-01T00:00:00.000Z"
        properties: dict[str, str | None] = {
            "createdate": contact.get("createdate", stamp),
            "hs_object_id": str(object_id),
            "lastmodifieddate": contact.get("lastmodifieddate", stamp),
        }
        # HubSpot answers every requested property, with null where it has no value.
        properties.update({name: contact.get(name) for name in wanted})
        return {
            "id": str(object_id),
            "properties": properties,
            "createdAt": properties["createdate"],
            "updatedAt": properties["lastmodifieddate"],
            "archived": False,
        }

    def _answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> JSONResponse:
        self.answers.append(status)
        limit = self.limit_per_10s or 100
        used = len(self._window)
        rate_headers = {
            "X-HubSpot-RateLimit-Daily": str(DAILY_LIMIT),
            "X-HubSpot-RateLimit-Daily-Remaining": str(DAILY_LIMIT - len(self.answers)),
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
            "X-HubSpot-RateLimit-Max": str(limit),
            "X-HubSpot-RateLimit-Remaining": str(max(0, limit - used)),
        }
        return JSONResponse(body, status_code=status, headers={**rate_headers, **(headers or {})})


DEFAULT_STAGE_LABELS = (
    ("subscriber", "Subscriber"),
    ("lead", "Lead"),
    ("marketingqualifiedlead", "Marketing Qualified Lead"),
    ("salesqualifiedlead", "Sales Qualified Lead"),
    ("opportunity", "Opportunity"),
    ("customer", "Customer"),
    ("evangelist", "Evangelist"),
    ("other", "Other"),
)


def stage_option(value: str, label: str, order: int, hidden: bool = False) -> dict[str, Any]:
    """One option of the ``lifecyclestage`` property, as HubSpot answers it."""
    return {
        "label": label,
        "value": value,
        "displayOrder": order,
        "hidden": hidden,
        "description": "",
    }


def default_stage_options() -> list[dict[str, Any]]:
    """A portal's default lifecycle stages."""
    return [stage_option(v, label, n) for n, (v, label) in enumerate(DEFAULT_STAGE_LABELS)]


def create_fake_hubspot(
    *,
    token: str = DEFAULT_TOKEN,
    contacts: dict[int, dict[str, str]] | None = None,
    archived: set[int] | None = None,
    latency_s: float = 0.0,
    limit_per_10s: int | None = None,
) -> FakeHubSpot:
    """A fake portal holding ``contacts``; answers 401 to any token but ``token``."""
    return FakeHubSpot(
        token=token,
        contacts=dict(contacts or {}),
        archived=set(archived or ()),
        latency_s=latency_s,
        limit_per_10s=limit_per_10s,
    )
