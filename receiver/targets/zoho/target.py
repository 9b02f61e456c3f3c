"""The Zoho CRM target: upsert Leads and Contacts by a HubSpot-id field, 100 a call.

Every record carries the external id field (``EXTERNAL_ID_FIELD``, default
``HubSpot_Contact_ID``, a unique field created in each module) and is upserted with
``POST {api}/crm/v8/{Leads|Contacts}/upsert`` and ``duplicate_check_fields`` = that
field, so a retried call updates what the first one created. Up to 100 records go in
one call (Zoho's limit, and Zoho meters calls in credits per 24 hours), and each
record's answer is classified on its own.

A delete searches each module for the external id
(``GET .../search?criteria=(HubSpot_Contact_ID:equals:123)``; ``204`` means none), then
deletes each record found by its Zoho id. Zoho's search index lags behind writes by a
little, so a record upserted moments before a privacy deletion may be missed by it.

Tokens: refresh-token OAuth against the data centre's accounts server through the
shared :mod:`receiver.targets.oauth` source, sent as ``Authorization: Zoho-oauthtoken``.
The API domain is the token answer's ``api_domain`` unless ``API_DOMAIN`` is set.

Answers onto :mod:`receiver.errors`:

* ``INVALID_TOKEN`` (a ``401``): one token refresh, shared by concurrent callers, and
  one retry inside the attempt.
* ``429`` or ``TOO_MANY_REQUESTS``: ``RateLimited`` (``Retry-After`` honoured if sent).
* API credits used up (a ``LIMIT_REACHED``-style code, or a message about credits;
  Zoho documents no exact code for v8, so both are matched): ``RateLimited`` until the
  next midnight UTC, logged as ``zoho_credits_exhausted``.
* ``5xx``, ``INTERNAL_ERROR``, timeouts, network errors: ``TransientError``.
* Every other record error (``INVALID_DATA``, ``MANDATORY_NOT_FOUND``,
  ``DUPLICATE_DATA``...): ``PermanentError`` with Zoho's code and message, naming the
  field (``details.api_name``) when Zoho does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog

from receiver.errors import (
    AuthExpired,
    PermanentError,
    RateLimited,
    TransientError,
    UpstreamError,
)
from receiver.models import Kind
from receiver.targets.base import EventRef, UpsertRequest, UpsertResult
from receiver.targets.http import counted_request, json_or_none, retry_after
from receiver.targets.oauth import Token, TokenSource
from receiver.targets.zoho.settings import ZohoSettings

log = structlog.get_logger(__name__)

MODULES: dict[Kind, str] = {"lead": "Leads", "contact": "Contacts"}
#: Sent for a required field HubSpot has no value for, as HubSpot's own connectors do.
PLACEHOLDER = "[not provided]"
REQUIRED_FIELDS: dict[Kind, tuple[str, ...]] = {
    "lead": ("Last_Name", "Company"),
    "contact": ("Last_Name",),
}
_CONTACT_MAPPING = {
    "First_Name": "firstname",
    "Last_Name": "lastname",
    "Email": "email",
    "Phone": "phone",
    "Designation": "jobtitle",
}
_TRANSIENT_CODES = frozenset({"INTERNAL_ERROR", "ALREADY_MODIFIED"})
_RATE_CODES = frozenset({"TOO_MANY_REQUESTS"})
_CREDIT_CODES = frozenset({"LIMIT_REACHED", "API_LIMIT_EXCEEDED"})
_TOKEN_CODES = frozenset({"INVALID_TOKEN", "AUTHENTICATION_FAILURE"})


def default_mapping(kind: Kind) -> dict[str, str]:
    """Zoho field API name -> HubSpot property for a Lead or a Contact."""
    mapping = dict(_CONTACT_MAPPING)
    if kind == "lead":
        mapping["Company"] = "company"
    return mapping


class ZohoTarget:
    """Upserts Leads and Contacts into Zoho CRM over its REST API."""

    name = "zoho"
    one_kind_per_call = True
    calls_are_metered = True  # API credits per day
    supports_convert = False

    def __init__(
        self,
        *,
        settings: ZohoSettings,
        http: httpx.AsyncClient,
        on_call: Callable[[str], None] | None = None,
        clock: Callable[[], float] = lambda: datetime.now(UTC).timestamp(),
    ) -> None:
        self._http = http
        self._on_call = on_call
        self._clock = clock
        self._field = settings.external_id_field
        self._version = settings.api_version
        self._api_domain = settings.api_domain
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self.batch_size = settings.batch_size
        form = None
        if settings.client_id and settings.client_secret and settings.refresh_token:
            form = {
                "grant_type": "refresh_token",
                "client_id": settings.client_id,
                "client_secret": settings.client_secret.get_secret_value(),
                "refresh_token": settings.refresh_token.get_secret_value(),
            }
        self._tokens = TokenSource(
            http=http,
            label="Zoho",
            token_url=f"{settings.accounts_url}/oauth/v2/token",
            form=form,
            parse=_api_domain,
            on_call=on_call,
        )

    def __repr__(self) -> str:
        return f"ZohoTarget(api_domain={self._api_domain!r}, field={self._field!r})"

    @property
    def token_refreshes(self) -> int:
        """How many times a new access token was fetched."""
        return self._tokens.refreshes

    def api_status(self) -> dict[str, Any] | None:
        """None: this target reports no API allocation."""
        return None

    def default_mapping(self, kind: Kind) -> dict[str, str]:
        """Zoho field -> HubSpot property, before the user's overrides."""
        return default_mapping(kind)

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        """Upsert one record (one call of one)."""
        result = (await self._upsert_module(request.kind, [request]))[0]
        if isinstance(result, UpstreamError):
            raise result
        return result

    async def upsert_batch(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        """Leads and Contacts apart, up to ``batch_size`` per call; results in order.

        A whole-call error (outage, rate limit) becomes the error of that call's records
        only.
        """
        units: list[tuple[Kind, list[int]]] = []
        by_kind: dict[Kind, list[int]] = {}
        for index, request in enumerate(requests):
            by_kind.setdefault(request.kind, []).append(index)
        for kind, indexes in by_kind.items():
            step = self.batch_size
            units += [(kind, indexes[i : i + step]) for i in range(0, len(indexes), step)]

        async def run(kind: Kind, idx: list[int]) -> list[UpsertResult | UpstreamError]:
            try:
                return await self._upsert_module(kind, [requests[i] for i in idx])
            except UpstreamError as exc:
                return [exc] * len(idx)

        outcomes = await asyncio.gather(*(run(kind, idx) for kind, idx in units))
        results: list[UpsertResult | UpstreamError | None] = [None] * len(requests)
        for (_, indexes), outcome in zip(units, outcomes, strict=True):
            for index, result in zip(indexes, outcome, strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    async def delete(self, hubspot_id: str, *, event: EventRef | None = None) -> int:
        """Find the Lead and the Contact by external id and delete them; returns how many."""
        counts = await asyncio.gather(*(self._delete_in(m, hubspot_id) for m in MODULES.values()))
        return sum(counts)

    async def aclose(self) -> None:
        """Nothing to release: the injected ``http`` client is closed by its owner."""

    # -- calls ------------------------------------------------------------------------

    async def _upsert_module(
        self, kind: Kind, requests: list[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        module = MODULES[kind]
        body = {
            "data": [self._record(r) for r in requests],
            "duplicate_check_fields": [self._field],
        }
        response = await self._call("POST", f"/{module}/upsert", json=body)
        data = json_or_none(response)
        items = data.get("data") if isinstance(data, dict) else None
        if response.status_code >= 500 or response.status_code == 429:
            raise self._error(response, data)
        if not isinstance(items, list):
            raise self._error(response, data)
        if len(items) != len(requests):
            raise TransientError(
                "bad_response",
                f"Zoho answered an upsert of {len(requests)} {module} with {len(items)} results",
            )
        return [self._item_result(item) for item in items]

    async def _delete_in(self, module: str, hubspot_id: str) -> int:
        value = "".join(f"\\{c}" if c in "(),\\" else c for c in str(hubspot_id))
        response = await self._call(
            "GET",
            f"/{module}/search",
            params={"criteria": f"({self._field}:equals:{value})", "fields": "id"},
        )
        if response.status_code == 204:
            return 0
        data = json_or_none(response)
        items = data.get("data") if isinstance(data, dict) else None
        if response.status_code != 200 or not isinstance(items, list):
            raise self._error(response, data)
        ids = [str(item["id"]) for item in items if isinstance(item, dict) and item.get("id")]
        deleted = 0
        for record_id in ids:
            answer = await self._call("DELETE", f"/{module}/{record_id}")
            answer_data = json_or_none(answer)
            results = answer_data.get("data") if isinstance(answer_data, dict) else None
            first = results[0] if isinstance(results, list) and results else None
            if answer.is_success and isinstance(first, dict) and first.get("code") == "SUCCESS":
                deleted += 1
                continue
            code = first.get("code") if isinstance(first, dict) else None
            if code == "INVALID_DATA" or answer.status_code == 404:  # gone meanwhile
                continue
            raise self._error(answer, first if isinstance(first, dict) else answer_data)
        return deleted

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        async def send(token: Token) -> httpx.Response:
            domain = self._api_domain or token.extras.get("api_domain")
            if not domain:
                raise PermanentError(
                    "NO_API_DOMAIN",
                    "the Zoho token answer carried no api_domain; set STAGESYNC_ZOHO_API_DOMAIN",
                )
            url = f"{domain.rstrip('/')}/crm/{self._version}{path}"
            headers = {
                "Authorization": f"Zoho-oauthtoken {token.access_token}",
                "Accept": "application/json",
            }
            async with self._semaphore:
                return await counted_request(
                    self._http,
                    method,
                    url,
                    label="Zoho",
                    on_call=self._on_call,
                    json=json,
                    params=params,
                    headers=headers,
                )

        def still_refused(response: httpx.Response) -> UpstreamError:
            code, message = _code_message(json_or_none(response))
            return AuthExpired(
                code or "INVALID_TOKEN",
                "Zoho refused a freshly refreshed access token"
                + (f": {self._tokens.scrub(message)}" if message else ""),
            )

        return await self._tokens.call(send, refused=_token_refused, still_refused=still_refused)

    # -- shapes and answers -----------------------------------------------------------

    def _record(self, request: UpsertRequest) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for name, value in request.fields.items():
            if name in (self._field, "id"):
                continue
            record[name] = None if isinstance(value, str) and not value.strip() else value
        for name in REQUIRED_FIELDS[request.kind]:
            if name in record:
                if record[name] is None:
                    record[name] = PLACEHOLDER
            elif request.may_create:
                record[name] = PLACEHOLDER
        record[self._field] = request.hubspot_id
        return record

    def _item_result(self, item: Any) -> UpsertResult | UpstreamError:
        if not isinstance(item, dict):
            return TransientError("bad_response", "Zoho answered a record with no result")
        details = item.get("details")
        if item.get("code") == "SUCCESS" and isinstance(details, dict) and details.get("id"):
            return UpsertResult(str(details["id"]), created=item.get("action") == "insert")
        return self._classify(item, None)

    def _error(self, response: httpx.Response, data: Any) -> UpstreamError:
        return self._classify(data if isinstance(data, dict) else {}, response)

    def _classify(self, item: Mapping[str, Any], response: httpx.Response | None) -> UpstreamError:
        status = response.status_code if response is not None else None
        code, message = _code_message(item)
        details = item.get("details")
        field = details.get("api_name") if isinstance(details, dict) else None
        text = message or (f"Zoho answered HTTP {status}" if status else "Zoho refused the record")
        if field and str(field) not in text:
            text = f"{text} (field: {field})"
        text = self._tokens.scrub(text)
        wait = retry_after(response) if response is not None else None
        whole_call = response is not None
        if code in _CREDIT_CODES or (whole_call and "credit" in (message or "").lower()):
            log.warning("zoho_credits_exhausted", code=code)
            return RateLimited(code or "LIMIT_REACHED", text, self._until_next_day())
        if status == 429 or code in _RATE_CODES:
            return RateLimited(code or "http_429", text, wait)
        if (status is not None and (status >= 500 or status == 408)) or code in _TRANSIENT_CODES:
            return TransientError(code or f"http_{status}", text, wait)
        if code in _TOKEN_CODES:
            return AuthExpired(code, text)
        return PermanentError(code or f"http_{status}", text)

    def _until_next_day(self) -> float:
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return (midnight - now).total_seconds()


def _api_domain(body: Mapping[str, Any]) -> dict[str, str]:
    domain = body.get("api_domain")
    return {"api_domain": domain} if isinstance(domain, str) and domain else {}


def _code_message(body: Any) -> tuple[str | None, str | None]:
    if not isinstance(body, dict):
        return None, None
    code, message = body.get("code"), body.get("message")
    return (str(code) if code else None), (str(message) if message else None)


def _token_refused(response: httpx.Response) -> bool:
    if response.status_code not in (401, 400):
        return False
    code, _ = _code_message(json_or_none(response))
    return code in _TOKEN_CODES or (response.status_code == 401 and code is None)
