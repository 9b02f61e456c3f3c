"""The Salesforce target: upsert Leads and Contacts by a HubSpot-id external id field.

Every record is keyed by ``{external_id_field} = {hubspot id}``, so an upsert is
idempotent: a retried or repeated call leaves Salesforce as one call would. One record
goes through ``PATCH sobjects/{Object}/{field}/{id}``; many go through sObject
Collections upsert, 200 a call, so a backlog costs one API call per 200 contacts
instead of one per contact (Salesforce meters calls per org per 24 hours), and
:meth:`SalesforceTarget.bulk_upsert` runs Bulk API 2.0 jobs
(:mod:`receiver.targets.salesforce.bulk`) for a backfill or a backlog of
``bulk_threshold`` records or more.

Calls go through :class:`~receiver.targets.salesforce.client.SalesforceClient` (the
session, the API budget); a Lead Salesforce reports converted is followed to its Contact,
and ``PROMOTION=convert`` converts Leads, in :mod:`receiver.targets.salesforce.convert`.
Every way a call can end is mapped onto :mod:`receiver.errors`, in the client for the
transport and the token, in :mod:`receiver.targets.salesforce.errors` for answers; field
values are converted by :mod:`receiver.targets.salesforce.fields`:

* ``401 INVALID_SESSION_ID``: one token refresh and one retry, inside the same attempt.
  Without refresh settings: ``PermanentError``. Still 401 with the new token:
  ``AuthExpired``, retried later, as the spec lists "expired tokens after one refresh"
  among the transient failures.
* Above ``SALESFORCE_API_BUDGET`` of the org's daily API limit: ``RateLimited`` without
  a call, until a re-check finds the use below it again.
* ``403 REQUEST_LIMIT_EXCEEDED``: ``RateLimited`` with no ``retry_after`` (Salesforce
  sends no ``Retry-After``; the dispatcher's backoff applies).
* ``5xx``, timeouts, network errors, ``UNABLE_TO_LOCK_ROW``: ``TransientError``.
* ``300`` (key matched several records, code ``MULTIPLE_CHOICES``) and every other
  ``4xx``: ``PermanentError`` with Salesforce's ``errorCode`` and ``message``.

A record's error inside a collection answer is classified the same way by its
``statusCode`` and returned in the result list; only whole-call errors are raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from receiver.errors import PermanentError, TransientError, UpstreamError
from receiver.models import Kind
from receiver.targets.base import EventRef, UpsertRequest, UpsertResult
from receiver.targets.http import json_or_none
from receiver.targets.salesforce.auth import TokenSource
from receiver.targets.salesforce.budget import ApiBudget
from receiver.targets.salesforce.bulk import BulkUpserts
from receiver.targets.salesforce.client import SalesforceClient
from receiver.targets.salesforce.config import SalesforceConfig
from receiver.targets.salesforce.convert import Conversions, is_converted_lead
from receiver.targets.salesforce.errors import record_result, response_error
from receiver.targets.salesforce.fields import OBJECTS, default_mapping, prepare_fields

T = TypeVar("T")

#: Most records one sObject Collections call takes.
COLLECTION_LIMIT = 200
_MIN_COLLECTIONS_VERSION = 46.0


class SalesforceTarget:
    """Upserts Leads and Contacts into Salesforce over its REST API.

    ``http`` belongs to the caller, who closes it; :meth:`aclose` leaves it open.
    ``on_call`` hears ``"2xx"``/``"4xx"``/``"5xx"``/``"error"`` once per HTTP call
    (token requests included); ``on_limit_info`` hears ``(used, limit)`` from every
    ``Sforce-Limit-Info`` header, also kept in :attr:`api_usage`.
    """

    one_kind_per_call = True  # a collection upsert takes one sObject type
    calls_are_metered = True  # the org's daily API allocation
    name = "salesforce"
    batch_size = COLLECTION_LIMIT
    supports_convert = True

    def __init__(
        self,
        *,
        config: SalesforceConfig,
        http: httpx.AsyncClient,
        on_call: Callable[[str], None] | None = None,
        on_limit_info: Callable[[int, int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._on_limit_info = on_limit_info
        version = config.api_version.strip()
        self._version = version if version.startswith("v") else f"v{version}"
        self._field = config.external_id_field
        self._collections = _version_number(self._version) >= _MIN_COLLECTIONS_VERSION
        self._tokens = TokenSource(
            http=http,
            token_url=config.token_url,
            access_token=config.access_token,
            instance_url=config.instance_url,
            client_id=config.client_id,
            client_secret=config.client_secret,
            refresh_token=config.refresh_token,
            on_call=on_call,
        )
        self.api_usage: tuple[int, int] | None = None
        self.budget = ApiBudget(
            config.api_budget, recheck_s=config.api_budget_recheck_s, clock=clock
        )
        self.client = SalesforceClient(
            http=http,
            tokens=self._tokens,
            version=self._version,
            external_id_field=self._field,
            budget=self.budget,
            max_concurrency=config.max_concurrency,
            on_call=on_call,
            on_limit_info=self._limit_info,
        )
        self.conversions = Conversions(self.client, config.converted_status)
        self.bulk_threshold = config.bulk_threshold
        self.bulk = BulkUpserts(self.client)

    def __repr__(self) -> str:
        return f"SalesforceTarget(config={self.config!r})"

    @property
    def token_refreshes(self) -> int:
        """How many times a new access token was fetched."""
        return self._tokens.refreshes

    def api_status(self) -> dict[str, Any] | None:
        """The org's daily API use as last reported, and whether calls are paused."""
        return self.budget.status()

    def default_mapping(self, kind: Kind) -> dict[str, str]:
        """Salesforce field -> HubSpot property, before the user's overrides."""
        return default_mapping(kind)

    async def aclose(self) -> None:
        """Nothing to release: the injected ``http`` client is closed by its owner."""

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        """Create or update one Lead or Contact keyed by its HubSpot id."""
        result = (await self.upsert_batch([request]))[0]
        if isinstance(result, UpstreamError):
            raise result
        return result

    async def _upsert_one(self, request: UpsertRequest) -> UpsertResult:
        obj = OBJECTS[request.kind]
        body = prepare_fields(
            request.kind,
            request.fields,
            external_id_field=self._field,
            may_create=request.may_create,
        )
        response = await self._call("PATCH", self._record_path(obj, request.hubspot_id), body)
        status = response.status_code
        if status in (200, 201):
            data = json_or_none(response)
            record_id = data.get("id") if isinstance(data, dict) else None
            created = status == 201 or (isinstance(data, dict) and data.get("created") is True)
            if isinstance(record_id, str) and record_id:
                return UpsertResult(target_id=record_id, created=created)
            return UpsertResult(await self._lookup_id(obj, request.hubspot_id), created)
        if status == 204:
            # API versions before 46.0 answer an update with no body: ask for the Id
            # (one more call, on old versions only) rather than store no id at all.
            return UpsertResult(await self._lookup_id(obj, request.hubspot_id), False)
        raise self._error(response, obj, request.hubspot_id)

    async def upsert_batch(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        """Upsert many records: Leads and Contacts apart, up to 200 per collection call.

        Results come back in request order. A record Salesforce refused holds its
        error. When a whole call fails (outage, rate limit) its records, and only its,
        hold that call's error: a Lead call's 400 must not fail the Contacts of a call
        that met a 503 and should be retried. Contacts to ``convert`` are promoted first;
        those with no Lead are upserted with the rest.
        """
        results: list[UpsertResult | UpstreamError | None] = [None] * len(requests)
        promoting = [i for i, r in enumerate(requests) if r.convert and r.kind == "contact"]
        if promoting:
            promoted = await _per_record(
                self.conversions.promote([requests[i] for i in promoting]), len(promoting)
            )
            for index, result in zip(promoting, promoted, strict=True):
                results[index] = result
        units: list[tuple[Kind, list[int]]] = []
        by_kind: dict[Kind, list[int]] = {}
        for index, request in enumerate(requests):
            if results[index] is None:
                by_kind.setdefault(request.kind, []).append(index)
        size = self.batch_size if self._collections else 1
        for kind, indexes in by_kind.items():
            units.extend((kind, indexes[i : i + size]) for i in range(0, len(indexes), size))
        outcomes = await asyncio.gather(
            *(self._run_unit(kind, [requests[i] for i in idx]) for kind, idx in units)
        )
        for (_, indexes), outcome in zip(units, outcomes, strict=True):
            for position, index in enumerate(indexes):
                results[index] = (
                    outcome if isinstance(outcome, UpstreamError) else outcome[position]
                )
        return [result for result in results if result is not None]

    async def bulk_upsert(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        """Upsert many records through Bulk API 2.0 jobs, one per object: for a backfill,
        or a backlog of ``bulk_threshold`` records or more. Results as :meth:`upsert_batch`
        gives them; Leads found converted are followed to their Contacts, and contacts to
        ``convert`` go through :meth:`upsert_batch`, 200 at a time.
        """
        results: list[UpsertResult | UpstreamError | None] = [None] * len(requests)
        promoting = [i for i, r in enumerate(requests) if r.convert and r.kind == "contact"]
        for start in range(0, len(promoting), COLLECTION_LIMIT):
            chunk = promoting[start : start + COLLECTION_LIMIT]
            done = await self.upsert_batch([requests[i] for i in chunk])
            for index, result in zip(chunk, done, strict=True):
                results[index] = result
        for kind in OBJECTS:
            indexes = [i for i, r in enumerate(requests) if r.kind == kind and results[i] is None]
            if not indexes:
                continue
            chosen = [requests[i] for i in indexes]
            outcome = await self.bulk.upsert(kind, chosen)
            if kind == "lead":
                await self._follow_converted(chosen, outcome)
            for index, result in zip(indexes, outcome, strict=True):
                results[index] = result
        return [result for result in results if result is not None]

    async def delete(self, hubspot_id: str, *, event: EventRef | None = None) -> int:
        """Delete the Lead and the Contact with this HubSpot id; returns how many existed."""
        counts = await asyncio.gather(
            *(self._delete_one(obj, hubspot_id) for obj in OBJECTS.values())
        )
        return sum(counts)

    async def _run_unit(
        self, kind: Kind, requests: list[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError] | UpstreamError:
        results: list[UpsertResult | UpstreamError]
        if len(requests) == 1:
            try:
                results = [await self._upsert_one(requests[0])]
            except PermanentError as exc:  # the record's own error
                results = [exc]
            except UpstreamError as exc:
                return exc
        else:
            try:
                results = await self._collection_upsert(kind, requests)
            except UpstreamError as exc:
                return exc
        if kind == "lead":
            await self._follow_converted(requests, results)
        return results

    async def _follow_converted(
        self, requests: Sequence[UpsertRequest], results: list[UpsertResult | UpstreamError]
    ) -> None:
        """Send the updates of Leads converted in Salesforce to their Contacts, in place."""
        refused = [i for i, result in enumerate(results) if is_converted_lead(result)]
        for start in range(0, len(refused), COLLECTION_LIMIT):  # one query per 200
            chunk = refused[start : start + COLLECTION_LIMIT]
            followed = await _per_record(
                self.conversions.follow([requests[i] for i in chunk]), len(chunk)
            )
            for index, result in zip(chunk, followed, strict=True):
                if result is not None:
                    results[index] = result

    async def _collection_upsert(
        self, kind: Kind, requests: list[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        obj = OBJECTS[kind]
        records = [
            {
                "attributes": {"type": obj},
                self._field: request.hubspot_id,
                **prepare_fields(
                    kind,
                    request.fields,
                    external_id_field=self._field,
                    may_create=request.may_create,
                ),
            }
            for request in requests
        ]
        path = f"/services/data/{self._version}/composite/sobjects/{obj}/{quote(self._field)}"
        response = await self._call("PATCH", path, {"allOrNone": False, "records": records})
        if response.status_code != 200:
            raise self._error(response, obj, None)
        data = json_or_none(response)
        if not isinstance(data, list) or len(data) != len(requests):
            raise TransientError(
                "bad_response",
                f"Salesforce answered a {obj} collection upsert of {len(requests)} records "
                "with something other than one result per record",
            )
        return [record_result(item, self.client.scrub) for item in data]

    async def _delete_one(self, obj: str, hubspot_id: str) -> int:
        response = await self._call("DELETE", self._record_path(obj, hubspot_id))
        if response.status_code in (200, 204):
            return 1
        if response.status_code == 404:  # no record with that key: nothing to delete
            return 0
        raise self._error(response, obj, hubspot_id)

    async def _lookup_id(self, obj: str, hubspot_id: str) -> str:
        path = self._record_path(obj, hubspot_id)
        response = await self._call("GET", path, params={"fields": "Id"})
        data = json_or_none(response) if response.status_code == 200 else None
        if isinstance(data, dict) and isinstance(data.get("Id"), str) and data["Id"]:
            return str(data["Id"])
        if response.status_code == 200:
            raise TransientError("bad_response", f"Salesforce returned the {obj} without an Id")
        raise self._error(response, obj, hubspot_id)

    def _record_path(self, obj: str, hubspot_id: str) -> str:
        key = quote(str(hubspot_id), safe="")
        return f"/services/data/{self._version}/sobjects/{obj}/{quote(self._field)}/{key}"

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        return await self.client.rest(method, path, body, params=params)

    def _limit_info(self, used: int, limit: int) -> None:
        self.api_usage = (used, limit)
        if self._on_limit_info is not None:
            self._on_limit_info(used, limit)

    def _error(self, response: httpx.Response, obj: str, hubspot_id: str | None) -> UpstreamError:
        key = f"{self._field}={hubspot_id}" if hubspot_id is not None else self._field
        return response_error(response, obj, key, self.client.scrub)


async def _per_record(work: Awaitable[list[T]], count: int) -> list[T | UpstreamError]:
    """``work``'s results, or its whole-call error once per record."""
    try:
        return list(await work)
    except UpstreamError as exc:
        return [exc] * count


def _version_number(version: str) -> float:
    try:
        return float(version.removeprefix("v"))
    except ValueError:
        return _MIN_COLLECTIONS_VERSION
