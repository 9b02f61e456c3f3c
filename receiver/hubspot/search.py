"""HubSpot CRM search for contacts (``POST /crm/v3/objects/contacts/search``).

Backfill and reconciliation read HubSpot through this: every contact matching some
filters, sorted by ``hs_object_id`` ascending, a page (up to 200) a call, carried on by
``after``. HubSpot answers at most 10,000 results for one query and refuses to page
further with a ``400``; the search then opens a new *window*, the same filters plus
``hs_object_id > the last id seen``, and pages on from its start. Because the results
are sorted by that id, nothing is skipped or read twice, and the exact cap never
matters: the search only reacts to the refusal.

Calls wait for the pacer shared with batch reads (the portal's ten-second budget) and
for a pacer of their own at :data:`SEARCH_CALLS_PER_S`, under HubSpot's per-second
search limit. Answers map onto :mod:`receiver.errors` as the batch read's do: ``429``
is :class:`RateLimited` (``Retry-After``, else the policy: ``SECONDLY`` 1 s,
``TEN_SECONDLY_ROLLING`` 10 s, ``DAILY`` until midnight UTC re-checked every 15
minutes), ``5xx``/``408``/network errors :class:`TransientError`, ``401``
:class:`AuthExpired`, other ``4xx`` :class:`PermanentError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from receiver.errors import AuthExpired, PermanentError, RateLimited, TransientError
from receiver.hubspot.answers import CallReporter, text_of
from receiver.hubspot.client import Properties, parse_retry_after, rate_limit_delay
from receiver.hubspot.pacer import RequestPacer
from receiver.ops.metrics import status_class

SEARCH_PATH = "/crm/v3/objects/contacts/search"
#: HubSpot's largest search page.
MAX_PAGE_SIZE = 200
#: HubSpot allows 5 search calls a second per account; stay under it.
SEARCH_CALLS_PER_S = 4
OBJECT_ID = "hs_object_id"


@dataclass(frozen=True, slots=True)
class Filter:
    """One search filter: ``property operator value`` (``values`` for ``IN``)."""

    property_name: str
    operator: str
    value: str | None = None
    values: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The filter as HubSpot's body takes it."""
        doc: dict[str, Any] = {"propertyName": self.property_name, "operator": self.operator}
        if self.operator in ("IN", "NOT_IN"):
            doc["values"] = list(self.values)
        elif self.value is not None:
            doc["value"] = self.value
        return doc


@dataclass(frozen=True, slots=True)
class SearchCursor:
    """Where a search stands: the window's lower bound, the page token, the last id seen.

    ``window_after_id`` None is the first window (no id bound). Stored by a backfill
    job, so a restart goes on from here.
    """

    window_after_id: int | None = None
    after: str | None = None
    last_id: int | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    """One contact of a search answer, as the events raw it: id, properties, updatedAt."""

    object_id: int
    properties: Properties
    updated_at: str
    updated_ms: int

    def raw(self) -> dict[str, Any]:
        """What the search returned for it (the event's ``raw``)."""
        return {
            "id": str(self.object_id),
            "properties": self.properties,
            "updatedAt": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of results and the cursor of the next (None after the last page)."""

    hits: list[Hit]
    next: SearchCursor | None
    calls: int  # HTTP calls it took (2 when a new window was opened)


class ClientError(PermanentError):
    """A ``4xx`` answer other than 401 and 429; ``status`` is the HTTP status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(code, message)
        self.status = status


def parse_time_ms(value: object) -> int | None:
    """Milliseconds since the epoch of an ISO-8601 time such as ``2024-01-01T00:00:00.000Z``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return int(parsed.timestamp() * 1000)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


class ContactSearch:
    """Pages through HubSpot's contact search with a private-app token.

    ``http`` is owned by the caller. ``pacer`` is the one batch reads use; the search's
    own per-second pacer is made here unless given.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        token: str,
        pacer: RequestPacer,
        search_pacer: RequestPacer | None = None,
        on_call: Callable[[str], None] | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> None:
        if not token or not token.isascii() or not token.isprintable() or " " in token:
            raise ValueError("the HubSpot access token is empty or not a valid header value")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE}, got {page_size}")
        self._http = http
        self._url = base_url.rstrip("/") + SEARCH_PATH
        self._token = token
        self._pacer = pacer
        self._search_pacer = search_pacer or RequestPacer(SEARCH_CALLS_PER_S, 1.0)
        self._report = CallReporter(token=token, label="HubSpot search", on_call=on_call)
        self.page_size = page_size

    def __repr__(self) -> str:
        return f"ContactSearch(url={self._url!r})"

    async def page(
        self,
        filters: Sequence[Filter],
        properties: Sequence[str],
        cursor: SearchCursor,
        now: float,
    ) -> SearchPage:
        """The page at ``cursor`` of the contacts matching every filter, by id ascending.

        When HubSpot refuses to page further (a ``400`` on a page after the first of a
        window), a new window starts after the last id seen, in the same call.
        """
        calls = 1
        try:
            payload = await self._call(self._body(filters, properties, cursor), now)
        except ClientError as exc:
            if exc.status != 400 or cursor.after is None or cursor.last_id is None:
                raise
            cursor = SearchCursor(cursor.last_id, None, cursor.last_id)
            calls = 2
            payload = await self._call(self._body(filters, properties, cursor), now)
        hits = self._hits(payload)
        last_id = hits[-1].object_id if hits else cursor.last_id
        after = _next_after(payload)
        following = SearchCursor(cursor.window_after_id, after, last_id) if after else None
        return SearchPage(hits, following, calls)

    def _body(
        self, filters: Sequence[Filter], properties: Sequence[str], cursor: SearchCursor
    ) -> dict[str, Any]:
        group = [f.to_json() for f in filters]
        if cursor.window_after_id is not None:
            group.append(Filter(OBJECT_ID, "GT", str(cursor.window_after_id)).to_json())
        body: dict[str, Any] = {
            "filterGroups": [{"filters": group}] if group else [],
            "sorts": [{"propertyName": OBJECT_ID, "direction": "ASCENDING"}],
            "properties": list(dict.fromkeys(properties)),
            "limit": self.page_size,
        }
        if cursor.after is not None:
            body["after"] = cursor.after
        return body

    async def _call(self, body: dict[str, Any], now: float) -> dict[str, Any]:
        await self._search_pacer.acquire()
        try:
            await self._pacer.acquire()
            try:
                response = await self._http.post(
                    self._url, json=body, headers={"Authorization": f"Bearer {self._token}"}
                )
            finally:
                self._pacer.done()
        except httpx.TimeoutException as exc:
            raise self._report.network_error("timeout", "timed out", exc) from None
        except httpx.ConnectError as exc:
            raise self._report.network_error("connect_error", "could not connect", exc) from None
        except httpx.TransportError as exc:
            raise self._report.network_error("network_error", "failed", exc) from None
        finally:
            self._search_pacer.done()
        status = response.status_code
        self._report.record(status_class(status))
        payload = _json_object(response)
        if status == 200:
            return payload
        detail = self._report.detail(payload, response)
        if status == 429:
            raise self._rate_limited(payload, response, detail, now)
        if status >= 500 or status == 408:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
            raise TransientError(f"http_{status}", detail, retry_after=retry_after)
        if status == 401:
            raise AuthExpired(text_of(payload.get("category")) or "http_401", detail)
        if 400 <= status < 500:
            code = text_of(payload.get("category")) or f"http_{status}"
            raise ClientError(code, detail, status)
        raise TransientError(f"http_{status}", detail)

    def _hits(self, payload: dict[str, Any]) -> list[Hit]:
        results = payload.get("results")
        if not isinstance(results, list):
            raise TransientError("bad_response", "HubSpot search answered 200 without results")
        hits = []
        for item in results:
            if not isinstance(item, dict) or item.get("archived") is True:
                continue
            raw_id = item.get("id")
            if not isinstance(raw_id, str | int) or not str(raw_id).isdigit():
                continue
            props = item.get("properties")
            properties = {
                str(k): None if v is None else str(v)
                for k, v in (props.items() if isinstance(props, dict) else ())
            }
            updated = text_of(item.get("updatedAt")) or properties.get("lastmodifieddate") or ""
            updated_ms = parse_time_ms(updated)
            if updated_ms is None:
                # A contact without a usable modification time cannot be ordered against
                # webhooks; treat it as old (0) rather than drop it.
                updated_ms = 0
            hits.append(Hit(int(raw_id), properties, updated, updated_ms))
        return hits

    def _rate_limited(
        self, payload: dict[str, Any], response: httpx.Response, detail: str, now: float
    ) -> RateLimited:
        policy = text_of(payload.get("policyName"))
        if policy is None and "secondly limit" in (text_of(payload.get("message")) or ""):
            policy = "SECONDLY"  # the search limit's 429 names no policy
        delay = rate_limit_delay(policy, response.headers.get("Retry-After"), now)
        name = (policy or "").upper()
        if name != "DAILY":
            # Hold every search; the ten-second window is the portal's, so batch reads too.
            self._search_pacer.pause_for(delay)
            if name != "SECONDLY":
                self._pacer.pause_for(delay)
        code = text_of(payload.get("errorType")) or "RATE_LIMIT"
        message = self._report.scrub(
            f"{detail} (policy {policy or 'unknown'}, retry in {delay:.0f} s)"
        )
        return RateLimited(code, message, retry_after=delay)


def _next_after(payload: dict[str, Any]) -> str | None:
    paging = payload.get("paging")
    following = paging.get("next") if isinstance(paging, dict) else None
    after = following.get("after") if isinstance(following, dict) else None
    if isinstance(after, int):
        return str(after)
    return after if isinstance(after, str) and after else None
