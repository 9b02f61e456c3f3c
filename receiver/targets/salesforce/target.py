"""The Salesforce target: upsert Leads and Contacts by a HubSpot-id external id field.

Every record is keyed by ``{external_id_field} = {hubspot id}``, so an upsert is
idempotent: a retried or repeated call leaves Salesforce as one call would. One record
goes through ``PATCH sobjects/{Object}/{field}/{id}``; many go through sObject
Collections upsert, 200 a call, so a backlog costs one API call per 200 contacts
instead of one per contact (Salesforce meters calls per org per 24 hours).

Every way a call can end is mapped onto :mod:`receiver.errors`, here for the
transport and the token, in :mod:`receiver.targets.salesforce.errors` for answers; field
values are converted by :mod:`receiver.targets.salesforce.fields`:

* ``401 INVALID_SESSION_ID``: one token refresh (shared by concurrent callers, see
  :mod:`receiver.targets.salesforce.auth`) and one retry, inside the same attempt.
  Without refresh settings: ``PermanentError``. Still 401 with the new token:
  ``AuthExpired``, retried later, as the spec lists "expired tokens after one refresh"
  among the transient failures.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from receiver.errors import AuthExpired, PermanentError, TransientError, UpstreamError
from receiver.models import Kind
from receiver.targets.base import EventRef, UpsertRequest, UpsertResult
from receiver.targets.salesforce.auth import Session, TokenSource, status_class
from receiver.targets.salesforce.errors import (
    first_error,
    json_or_none,
    parse_limit_info,
    record_result,
    response_error,
)
from receiver.targets.salesforce.fields import (
    DEFAULT_EXTERNAL_ID_FIELD,
    OBJECTS,
    default_mapping,
    prepare_fields,
)
from receiver.targets.salesforce.settings import DEFAULT_TOKEN_URL, SalesforceSettings

#: Most records one sObject Collections call takes.
COLLECTION_LIMIT = 200
_MIN_COLLECTIONS_VERSION = 46.0


@dataclass(frozen=True)
class SalesforceConfig:
    """Connection settings; secrets are left out of ``repr``."""

    instance_url: str | None
    access_token: str | None = field(repr=False)
    client_id: str | None
    client_secret: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    token_url: str = DEFAULT_TOKEN_URL
    api_version: str = "v62.0"
    external_id_field: str = DEFAULT_EXTERNAL_ID_FIELD
    max_concurrency: int = 10

    @classmethod
    def from_settings(cls, settings: SalesforceSettings) -> SalesforceConfig:
        """The connection settings of the ``[salesforce]`` table and its variables."""

        def reveal(secret: SecretStr | None) -> str | None:
            return secret.get_secret_value() if secret is not None else None

        return cls(
            instance_url=settings.instance_url,
            access_token=reveal(settings.access_token),
            client_id=settings.client_id,
            client_secret=reveal(settings.client_secret),
            refresh_token=reveal(settings.refresh_token),
            token_url=settings.token_url,
            api_version=settings.api_version,
            external_id_field=settings.external_id_field,
            max_concurrency=settings.max_concurrency,
        )


class SalesforceTarget:
    """Upserts Leads and Contacts into Salesforce over its REST API.

    ``http`` belongs to the caller, who closes it; :meth:`aclose` leaves it open.
    ``on_call`` hears ``"2xx"``/``"4xx"``/``"5xx"``/``"error"`` once per HTTP call
    (token requests included); ``on_limit_info`` hears ``(used, limit)`` from every
    ``Sforce-Limit-Info`` header, also kept in :attr:`api_usage`.
    """

    one_kind_per_call = True  # a collection upsert takes one sObject type
    name = "salesforce"
    batch_size = COLLECTION_LIMIT
    supports_convert = False

    def __init__(
        self,
        *,
        config: SalesforceConfig,
        http: httpx.AsyncClient,
        on_call: Callable[[str], None] | None = None,
        on_limit_info: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config
        self._http = http
        self._on_call = on_call
        self._on_limit_info = on_limit_info
        self._semaphore = asyncio.Semaphore(max(1, config.max_concurrency))
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
            on_call=self._count,
        )
        self.api_usage: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"SalesforceTarget(config={self.config!r})"

    @property
    def token_refreshes(self) -> int:
        """How many times a new access token was fetched."""
        return self._tokens.refreshes

    def default_mapping(self, kind: Kind) -> dict[str, str]:
        """Salesforce field -> HubSpot property, before the user's overrides."""
        return default_mapping(kind)

    async def aclose(self) -> None:
        """Nothing to release: the injected ``http`` client is closed by its owner."""

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        """Create or update one Lead or Contact keyed by its HubSpot id."""
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
        that met a 503 and should be retried.
        """
        units: list[tuple[Kind, list[int]]] = []
        by_kind: dict[Kind, list[int]] = {}
        for index, request in enumerate(requests):
            by_kind.setdefault(request.kind, []).append(index)
        size = self.batch_size if self._collections else 1
        for kind, indexes in by_kind.items():
            units.extend((kind, indexes[i : i + size]) for i in range(0, len(indexes), size))
        outcomes = await asyncio.gather(
            *(self._run_unit(kind, [requests[i] for i in idx]) for kind, idx in units)
        )
        results: list[UpsertResult | UpstreamError | None] = [None] * len(requests)
        for (_, indexes), outcome in zip(units, outcomes, strict=True):
            for position, index in enumerate(indexes):
                results[index] = (
                    outcome if isinstance(outcome, UpstreamError) else outcome[position]
                )
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
        if len(requests) == 1:
            try:
                return [await self.upsert(requests[0])]
            except PermanentError as exc:  # the record's own error
                return [exc]
            except UpstreamError as exc:
                return exc
        try:
            return await self._collection_upsert(kind, requests)
        except UpstreamError as exc:
            return exc

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
        return [record_result(item, self._tokens.scrub) for item in data]

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
        session = await self._tokens.session()
        response = await self._send(method, session, path, body, params)
        if response.status_code != 401:
            return response
        session = await self._tokens.refresh(session)  # PermanentError if it cannot
        response = await self._send(method, session, path, body, params)
        if response.status_code == 401:
            code, message = first_error(json_or_none(response), self._tokens.scrub)
            raise AuthExpired(
                code or "INVALID_SESSION_ID",
                "Salesforce rejected a freshly refreshed access token"
                + (f": {message}" if message else ""),
            )
        return response

    async def _send(
        self,
        method: str,
        session: Session,
        path: str,
        body: Any,
        params: dict[str, str] | None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {session.access_token}", "Accept": "application/json"}
        async with self._semaphore:
            try:
                response = await self._http.request(
                    method, session.instance_url + path, json=body, params=params, headers=headers
                )
            except httpx.TimeoutException as exc:
                self._count("error")
                raise TransientError("timeout", f"Salesforce {method} timed out") from exc
            except httpx.RequestError as exc:
                self._count("error")
                raise TransientError(
                    "connection_error", f"could not reach Salesforce ({type(exc).__name__})"
                ) from exc
        self._count(status_class(response.status_code))
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            self.api_usage = usage
            if self._on_limit_info is not None:
                self._on_limit_info(*usage)
        return response

    def _error(self, response: httpx.Response, obj: str, hubspot_id: str | None) -> UpstreamError:
        key = f"{self._field}={hubspot_id}" if hubspot_id is not None else self._field
        return response_error(response, obj, key, self._tokens.scrub)

    def _count(self, status: str) -> None:
        if self._on_call is not None:
            self._on_call(status)


def _version_number(version: str) -> float:
    try:
        return float(version.removeprefix("v"))
    except ValueError:
        return _MIN_COLLECTIONS_VERSION
