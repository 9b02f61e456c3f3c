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
import bisect
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
SEARCH_CAP = 10_000  # HubSpot's limit of results one search query pages through
MAX_SEARCH_LIMIT = 200
#: search filters the fake understands, and how it reads each property's values
SEARCH_OPERATORS = ("EQ", "NEQ", "IN", "NOT_IN", "GT", "GTE", "LT", "LTE")
DEFAULT_STAMP = "2024-01-01T00:00:00.000Z"


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
    #: search: results one query pages through before its 400; per-second limit (None: off)
    search_cap: int = SEARCH_CAP
    search_per_second: int | None = None
    secondly_429: int = 0
    #: counters, for assertions
    batch_read_calls: int = 0
    single_read_calls: int = 0
    search_calls: int = 0
    search_bodies: list[dict[str, Any]] = field(default_factory=list)
    ids_per_call: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    #: the ``lifecyclestage`` property's options, as HubSpot lists them (custom ones too)
    stage_options: list[dict[str, Any]] = field(default_factory=lambda: default_stage_options())
    property_reads: int = 0
    _window: deque[float] = field(init=False, default_factory=deque)
    _search_window: deque[float] = field(init=False, default_factory=deque)
    app: Starlette = field(init=False)

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/crm/v3/objects/contacts/batch/read", self._batch_read, methods=["POST"]),
                Route("/crm/v3/objects/contacts/search", self._search, methods=["POST"]),
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
        self.ten_secondly_429 = self.daily_429 = self.server_error = self.secondly_429 = 0
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

    def touch(self, object_id: int, when_ms: int | None = None, **properties: str) -> None:
        """Change a contact's properties and its modification time (now by default)."""
        contact = self.contacts.setdefault(object_id, {})
        contact.update(properties)
        stamp = when_ms if when_ms is not None else int(time.time() * 1000)
        contact["lastmodifieddate"] = _iso_ms(stamp)

    async def _search(self, request: Request) -> JSONResponse:
        """``POST /crm/v3/objects/contacts/search``: filters, one sort, ``limit``, ``after``.

        Past ``search_cap`` results of one query it answers 400, as HubSpot does at
        10,000. ``total`` is exact up to 20,000 contacts, a lower bound above.
        """
        self.search_calls += 1
        try:
            body = await request.json()
        except ValueError:
            body = None
        self.search_bodies.append(body if isinstance(body, dict) else {})
        refused = await self._gate(request)
        if refused is not None:
            return refused
        if self._take("secondly_429") or self._over_search_rate():
            return self._rate_limited("SECONDLY", "You have reached your secondly limit.")
        if not isinstance(body, dict):
            return self._answer(400, _error("Invalid input JSON", category="VALIDATION_ERROR"))
        limit = body.get("limit", 10)
        after = body.get("after", "0")
        if not isinstance(limit, int) or not 0 < limit <= MAX_SEARCH_LIMIT:
            message = f"limit must be between 1 and {MAX_SEARCH_LIMIT}"
            return self._answer(400, _error(message, category="VALIDATION_ERROR"))
        if not str(after).isdigit():
            return self._answer(400, _error("after must be a number", category="VALIDATION_ERROR"))
        offset = int(after)
        if offset >= self.search_cap:
            message = f"Search results are limited to {self.search_cap}; use a narrower query"
            return self._answer(400, _error(message, category="VALIDATION_ERROR"))
        try:
            groups = _filter_groups(body.get("filterGroups") or [])
            sort_by, descending = _sort(body.get("sorts") or [])
        except ValueError as exc:
            return self._answer(400, _error(str(exc), category="VALIDATION_ERROR"))
        matching = self._matching(groups, sort_by, descending, offset + limit + 1)
        page = matching[offset : offset + limit]
        wanted = [str(p) for p in body.get("properties") or []]
        more = len(matching) > offset + limit
        total = len(matching)
        if len(self.contacts) <= 20_000:
            total = len(self._matching(groups, sort_by, descending, None))
        payload: dict[str, Any] = {
            "total": total,
            "results": [self._object(i, self.contacts[i], wanted) for i in page],
        }
        if more:
            next_after = str(offset + limit)
            payload["paging"] = {"next": {"after": next_after, "link": f"?after={next_after}"}}
        return self._answer(200, payload)

    def _over_search_rate(self) -> bool:
        if self.search_per_second is None:
            return False
        now = time.monotonic()
        while self._search_window and self._search_window[0] <= now - 1.0:
            self._search_window.popleft()
        if len(self._search_window) >= self.search_per_second:
            return True
        self._search_window.append(now)
        return False

    def _matching(
        self,
        groups: list[list[tuple[str, str, list[str]]]],
        sort_by: str,
        descending: bool,
        enough: int | None,
    ) -> list[int]:
        """Ids of live contacts matching any group, sorted; stops at ``enough`` when the
        order is by id ascending (the only order a long search uses)."""
        ids = sorted(i for i in self.contacts if i not in self.archived)
        by_id = sort_by == "hs_object_id" and not descending
        if by_id:
            # Start at the window's lower bound when every group has one: the fake then
            # pages a large portal in time proportional to the page, not the portal.
            starts = [_lower_id_bound(g) for g in groups] if groups else [None]
            lowest = None if None in starts else min(s for s in starts if s is not None)
            if lowest is not None:
                ids = ids[bisect.bisect_right(ids, lowest) :]
        found = []
        for object_id in ids:
            contact = self.contacts[object_id]
            if not groups or any(_group_matches(object_id, contact, g) for g in groups):
                found.append(object_id)
                if by_id and enough is not None and len(found) >= enough:
                    break
        if not by_id:
            found.sort(key=lambda i: _sort_value(i, self.contacts[i], sort_by), reverse=descending)
        return found

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
        stamp = DEFAULT_STAMP
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


def _iso_ms(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _ms(value: str) -> int:
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def _sort_value(object_id: int, contact: dict[str, str], name: str) -> Any:
    if name == "hs_object_id":
        return object_id
    if name in ("lastmodifieddate", "createdate"):
        return _ms(contact.get(name, DEFAULT_STAMP))
    return contact.get(name) or ""


def _filter_groups(raw: Any) -> list[list[tuple[str, str, list[str]]]]:
    if not isinstance(raw, list) or len(raw) > 5:
        raise ValueError("filterGroups must be a list of at most 5 groups")
    groups = []
    for group in raw:
        filters = group.get("filters") if isinstance(group, dict) else None
        if not isinstance(filters, list) or len(filters) > 6:
            raise ValueError("each filter group needs a list of at most 6 filters")
        parsed = []
        for f in filters:
            if not isinstance(f, dict) or f.get("operator") not in SEARCH_OPERATORS:
                raise ValueError(f"unsupported filter: {f!r}")
            name = str(f.get("propertyName"))
            if f["operator"] in ("IN", "NOT_IN"):
                values = f.get("values")
                if not isinstance(values, list) or not values:
                    raise ValueError(f"{f['operator']} needs a list of values")
                parsed.append((name, str(f["operator"]), [str(v) for v in values]))
            else:
                if "value" not in f:
                    raise ValueError(f"{f['operator']} needs a value")
                parsed.append((name, str(f["operator"]), [str(f["value"])]))
        groups.append(parsed)
    return groups


def _sort(raw: Any) -> tuple[str, bool]:
    if not isinstance(raw, list) or len(raw) > 1:
        raise ValueError("only one sort rule is allowed")
    if not raw:
        return "hs_object_id", False  # HubSpot: by creation, oldest first
    rule = raw[0]
    if isinstance(rule, str):
        return rule, False
    if not isinstance(rule, dict):
        raise ValueError("a sort is a property name or an object")
    return str(rule.get("propertyName")), rule.get("direction") == "DESCENDING"


def _lower_id_bound(group: list[tuple[str, str, list[str]]]) -> int | None:
    bounds = [
        int(values[0]) - (1 if op == "GTE" else 0)
        for name, op, values in group
        if name == "hs_object_id" and op in ("GT", "GTE")
    ]
    return max(bounds) if bounds else None


def _group_matches(
    object_id: int, contact: dict[str, str], group: list[tuple[str, str, list[str]]]
) -> bool:
    for name, op, values in group:
        if name == "hs_object_id":
            have: Any = object_id
            want: list[Any] = [int(v) for v in values]
        elif name in ("lastmodifieddate", "createdate"):
            have = _ms(contact.get(name, DEFAULT_STAMP))
            want = [int(v) if v.isdigit() else _ms(v) for v in values]
        else:
            have = contact.get(name)
            want = list(values)
        if op == "EQ" and have != want[0]:
            return False
        if op == "NEQ" and have == want[0]:
            return False
        if op == "IN" and have not in want:
            return False
        if op == "NOT_IN" and have in want:
            return False
        if op in ("GT", "GTE", "LT", "LTE"):
            if have is None:
                return False
            if op == "GT" and not have > want[0]:
                return False
            if op == "GTE" and not have >= want[0]:
                return False
            if op == "LT" and not have < want[0]:
                return False
            if op == "LTE" and not have <= want[0]:
                return False
    return True


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
