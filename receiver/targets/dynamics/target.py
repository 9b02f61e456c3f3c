"""The Dynamics 365 target: upsert Leads and Contacts in Dataverse by an alternate key.

Every record is keyed by the alternate key column (``ALTERNATE_KEY``, default
``stagesync_hubspotcontactid``) holding the HubSpot id, so an upsert is idempotent:
``PATCH {URL}/api/data/v9.2/leads(stagesync_hubspotcontactid='123')`` creates or updates,
and ``DELETE`` on the same URL deletes (``404``: nothing to delete, which counts as done).

**Bursts go out as a ``$batch`` of those same upserts**, up to ``batch_size`` (200) per
request, with ``Prefer: odata.continue-on-error`` and no change set, so each record is
answered and classified on its own and one refused record holds back no other.
``UpsertMultiple`` was weighed and not used: Microsoft's documentation does not confirm
that the ``lead`` table supports it (the set of tables is per environment, in
``sdkmessagefilters``), and on standard tables it is all-or-nothing, so one invalid
Lead would fail its 199 neighbours, which would then be retried and fail again. A
``$batch`` of ``PATCH`` upserts works on every table that has the alternate key.

Tokens come from Entra ID by client credentials (scope ``{URL}/.default``) through the
shared :mod:`receiver.targets.oauth` source: cached until a minute before
``expires_in``, and refreshed once (for all concurrent callers) on a ``401``.

Answers onto :mod:`receiver.errors`:

* ``429`` (service protection: requests, execution time or concurrency per 5 minutes):
  ``RateLimited`` honouring ``Retry-After``. Calls in flight are capped by
  ``max_concurrency`` (default 16, at most 50), below Dataverse's 52 per user.
* ``5xx``, ``408``, timeouts, network errors: ``TransientError``.
* Any other ``4xx``: ``PermanentError`` with Dataverse's ``error.code`` (``0x…``) and
  ``error.message``.

``target_id`` is the record's GUID, read from the answer (``Prefer: return=representation``
with ``$select`` of the id column) or its ``OData-EntityId``; when neither carries one,
the alternate-key reference (``leads(stagesync_hubspotcontactid='123')``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from receiver.errors import (
    AuthExpired,
    PermanentError,
    RateLimited,
    TransientError,
    UpstreamError,
)
from receiver.models import Kind
from receiver.targets.base import EventRef, UpsertRequest, UpsertResult
from receiver.targets.dynamics import batch
from receiver.targets.dynamics.settings import DynamicsSettings
from receiver.targets.http import counted_request, json_or_none, retry_after
from receiver.targets.oauth import Token, TokenSource

ENTITY_SETS: dict[Kind, str] = {"lead": "leads", "contact": "contacts"}
ID_COLUMNS: dict[Kind, str] = {"lead": "leadid", "contact": "contactid"}
_CONTACT_MAPPING = {
    "firstname": "firstname",
    "lastname": "lastname",
    "emailaddress1": "email",
    "telephone1": "phone",
    "jobtitle": "jobtitle",
}
_LEAD_MAPPING = {**_CONTACT_MAPPING, "companyname": "company"}
#: A Lead's required Topic, when the mapping gives none.
SUBJECT = "HubSpot contact {id}"
_GUID = re.compile(
    r"\(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\)"
)
_ODATA = {"OData-MaxVersion": "4.0", "OData-Version": "4.0", "Accept": "application/json"}


def default_mapping(kind: Kind) -> dict[str, str]:
    """Dataverse column -> HubSpot property for a Lead or a Contact."""
    return dict(_LEAD_MAPPING if kind == "lead" else _CONTACT_MAPPING)


class DynamicsTarget:
    """Upserts Leads and Contacts into Dataverse over its Web API."""

    name = "dynamics"
    one_kind_per_call = False
    calls_are_metered = True  # service protection limits, and one $batch a batch
    supports_convert = False

    def __init__(
        self,
        *,
        settings: DynamicsSettings,
        http: httpx.AsyncClient,
        on_call: Callable[[str], None] | None = None,
    ) -> None:
        if settings.url is None:
            raise ValueError("the Dynamics target needs URL (see problems())")
        self._url = settings.url
        self._api = f"{settings.url}/api/data/{settings.api_version}"
        self._key = settings.alternate_key
        self._http = http
        self._on_call = on_call
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self.batch_size = settings.batch_size
        secret = settings.client_secret.get_secret_value() if settings.client_secret else ""
        form = None
        if settings.client_id and secret:
            form = {
                "grant_type": "client_credentials",
                "client_id": settings.client_id,
                "client_secret": secret,
                "scope": f"{settings.url}/.default",
            }
        self._tokens = TokenSource(
            http=http,
            label="Dynamics 365",
            token_url=settings.resolved_token_url,
            form=form,
            on_call=on_call,
        )

    def __repr__(self) -> str:
        return f"DynamicsTarget(url={self._url!r}, key={self._key!r})"

    @property
    def token_refreshes(self) -> int:
        """How many times a new access token was fetched."""
        return self._tokens.refreshes

    def api_status(self) -> dict[str, Any] | None:
        """None: this target reports no API allocation."""
        return None

    def default_mapping(self, kind: Kind) -> dict[str, str]:
        """Dataverse column -> HubSpot property, before the user's overrides."""
        return default_mapping(kind)

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        """Create or update one Lead or Contact by its alternate key."""
        url = self._record_url(request.kind, request.hubspot_id)
        body = self._body(request)
        response = await self._call(
            "PATCH", url, json=body, headers={"Prefer": "return=representation"}
        )
        result = self._result(
            request, response.status_code, response.headers, json_or_none(response)
        )
        if isinstance(result, UpstreamError):
            raise result
        return result

    async def upsert_batch(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        """Upsert many records in ``$batch`` requests of up to ``batch_size`` upserts."""
        chunks = [
            list(requests[i : i + self.batch_size])
            for i in range(0, len(requests), self.batch_size)
        ]
        outcomes = await asyncio.gather(
            *(self._batch(chunk) for chunk in chunks), return_exceptions=True
        )
        results: list[UpsertResult | UpstreamError] = []
        for chunk, outcome in zip(chunks, outcomes, strict=True):
            if isinstance(outcome, UpstreamError):
                results += [outcome] * len(chunk)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results += outcome
        return results

    async def delete(self, hubspot_id: str, *, event: EventRef | None = None) -> int:
        """Delete the Lead and the Contact with this HubSpot id; returns how many existed."""

        async def one(kind: Kind) -> int:
            response = await self._call("DELETE", self._record_url(kind, hubspot_id))
            if response.status_code in (200, 204):
                return 1
            if response.status_code == 404:
                return 0
            raise _error(response.status_code, response.headers, json_or_none(response))

        counts = await asyncio.gather(one("lead"), one("contact"))
        return sum(counts)

    async def aclose(self) -> None:
        """Nothing to release: the injected ``http`` client is closed by its owner."""

    # -- requests ---------------------------------------------------------------------

    async def _batch(self, requests: list[UpsertRequest]) -> list[UpsertResult | UpstreamError]:
        if len(requests) == 1:
            try:
                return [await self.upsert(requests[0])]
            except PermanentError as exc:
                return [exc]
        parts = [
            batch.Part(
                "PATCH",
                self._record_url(r.kind, r.hubspot_id),
                {"Prefer": "return=representation"},
                self._body(r),
            )
            for r in requests
        ]
        content_type, body = batch.encode(parts)
        response = await self._call(
            "POST",
            f"{self._api}/$batch",
            content=body,
            headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"},
        )
        if response.status_code != 200:
            raise _error(response.status_code, response.headers, json_or_none(response))
        try:
            answers = batch.decode(response.headers.get("Content-Type", ""), response.content)
        except ValueError as exc:
            raise TransientError("bad_response", f"Dataverse's $batch answer: {exc}") from exc
        results: list[UpsertResult | UpstreamError] = []
        for n, request in enumerate(requests):
            if n < len(answers):
                answer = answers[n]
                results.append(self._result(request, answer.status, answer.headers, answer.body))
            else:
                results.append(
                    TransientError(
                        "batch_incomplete", "Dataverse answered fewer upserts than the batch held"
                    )
                )
        return results

    async def _call(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        async def send(token: Token) -> httpx.Response:
            sent = {**_ODATA, **(headers or {}), "Authorization": f"Bearer {token.access_token}"}
            async with self._semaphore:
                return await counted_request(
                    self._http,
                    method,
                    url,
                    label="Dataverse",
                    on_call=self._on_call,
                    json=json,
                    content=content,
                    headers=sent,
                )

        def still_refused(response: httpx.Response) -> UpstreamError:
            code, message = _error_body(json_or_none(response))
            return AuthExpired(
                code or "http_401",
                "Dataverse refused a freshly requested access token"
                + (f": {self._tokens.scrub(message)}" if message else ""),
            )

        return await self._tokens.call(send, still_refused=still_refused)

    # -- shapes -----------------------------------------------------------------------

    def _record_url(self, kind: Kind, hubspot_id: str) -> str:
        value = quote(str(hubspot_id).replace("'", "''"), safe="")
        return f"{self._api}/{ENTITY_SETS[kind]}({self._key}='{value}')"

    def _reference(self, kind: Kind, hubspot_id: str) -> str:
        value = str(hubspot_id).replace("'", "''")
        return f"{ENTITY_SETS[kind]}({self._key}='{value}')"

    def _body(self, request: UpsertRequest) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for column, value in request.fields.items():
            if column == self._key:  # the key travels in the URL only
                continue
            body[column] = None if isinstance(value, str) and not value.strip() else value
        if request.kind == "lead" and request.may_create and "subject" not in body:
            body["subject"] = SUBJECT.format(id=request.hubspot_id)
        return body

    def _result(
        self, request: UpsertRequest, status: int, headers: Mapping[str, str], body: Any
    ) -> UpsertResult | UpstreamError:
        if status not in (200, 201, 204):
            return _error(status, headers, body, self._tokens.scrub)
        record_id = body.get(ID_COLUMNS[request.kind]) if isinstance(body, dict) else None
        if not isinstance(record_id, str) or not record_id:
            entity = _header(headers, "OData-EntityId") or ""
            match = _GUID.search(entity)
            record_id = match.group(1) if match else None
        return UpsertResult(
            record_id or self._reference(request.kind, request.hubspot_id), created=status == 201
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name) if isinstance(headers, httpx.Headers) else None
    if value is None:
        value = headers.get(name.lower()) or headers.get(name)
    return str(value) if value is not None else None


def _error_body(body: Any) -> tuple[str | None, str | None]:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (str(code) if code else None), (str(message) if message else None)


def _error(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    scrub: Callable[[str], str] = lambda text: text[:300],
) -> UpstreamError:
    code, message = _error_body(body)
    code = code or f"http_{status}"
    text = scrub(message or f"Dataverse answered HTTP {status}")
    if status == 429:
        wait = _retry_after_value(headers)
        return RateLimited(code, text, wait)
    if status >= 500 or status == 408:
        return TransientError(code, text, _retry_after_value(headers))
    if status == 401:
        return AuthExpired(code, text)
    return PermanentError(code, text)


def _retry_after_value(headers: Mapping[str, str]) -> float | None:
    value = _header(headers, "Retry-After")
    if value is None:
        return None
    return retry_after(httpx.Response(200, headers={"Retry-After": value}))
