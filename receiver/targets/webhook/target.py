"""The webhook target: each decision is one signed JSON POST to the user's endpoint.

For any system stagesync does not speak to directly. Each upsert or delete is a POST of
``{"type","kind","hubspot_id","fields","occurred_at"}`` to ``URL``, signed per Standard
Webhooks (:mod:`receiver.targets.webhook.signing`). ``webhook-id`` is made from the
stored event's id, the kind and the event's replay count, so every retry of one
delivery carries the same id and a receiver can drop repeats; a replay by hand is a
new delivery with a new id.

One record is one POST. A dispatch round hands over up to ``batch_size`` records, sent
side by side, at most ``max_concurrency`` POSTs in flight over all rounds.

Answers, each record on its own:

* ``2xx``: synced (``201`` counts as created); the answer's JSON ``id``, if any, is
  the target id, else the HubSpot id.
* ``429``: ``RateLimited``, honouring ``Retry-After`` (no attempt used).
* ``408``, ``5xx``, timeouts, network errors: ``TransientError``.
* other ``4xx`` (and ``3xx``, as redirects are not followed): ``PermanentError`` with
  code ``http_<status>`` and the start of the answer's body as the message.

A delete is a POST of ``contact.delete`` for the Lead and one for the Contact; a
``404`` or ``410`` to it means the receiver holds no such record, which is what a
delete wants.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from receiver.errors import PermanentError, RateLimited, TransientError, UpstreamError
from receiver.models import Kind
from receiver.targets.base import EventRef, UpsertRequest, UpsertResult
from receiver.targets.http import body_excerpt, counted_request, json_or_none, retry_after
from receiver.targets.webhook.settings import WebhookSettings
from receiver.targets.webhook.signing import Signer

#: HubSpot property names, passed on under their own names.
DEFAULT_PROPERTIES = (
    "email",
    "firstname",
    "lastname",
    "phone",
    "company",
    "jobtitle",
    "lifecyclestage",
)
_BODY_CHARS = 200
_KINDS: tuple[Kind, ...] = ("lead", "contact")


class WebhookTarget:
    """POSTs each upsert and delete, signed, to one URL."""

    name = "webhook"
    one_kind_per_call = False
    calls_are_metered = False  # one POST per record, batched or not
    supports_convert = False

    def __init__(
        self,
        *,
        settings: WebhookSettings,
        http: httpx.AsyncClient,
        on_call: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.url is None or settings.secret is None:
            raise ValueError("the webhook target needs URL and SECRET (see problems())")
        self._url = settings.url
        self._signer = Signer(settings.secret.get_secret_value())
        self._http = http
        self._on_call = on_call
        self._clock = clock
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self.batch_size = settings.batch_size

    def __repr__(self) -> str:
        return f"WebhookTarget(url={self._url!r})"

    def api_status(self) -> dict[str, Any] | None:
        """None: this target reports no API allocation."""
        return None

    def default_mapping(self, kind: Kind) -> dict[str, str]:
        """Every default property under its HubSpot name, for both kinds."""
        return {prop: prop for prop in DEFAULT_PROPERTIES}

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        """POST one ``contact.upsert``."""
        body = self._body(
            "contact.upsert", request.kind, request.hubspot_id, request.fields, request.event
        )
        message_id = _message_id(request.event, request.kind, request.hubspot_id, body)
        response = await self._post(message_id, body)
        if response.is_success:
            return UpsertResult(
                _answer_id(response) or request.hubspot_id, response.status_code == 201
            )
        raise _error(response)

    async def upsert_batch(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        """One POST per record, side by side; each record's answer on its own."""

        async def one(request: UpsertRequest) -> UpsertResult | UpstreamError:
            try:
                return await self.upsert(request)
            except UpstreamError as exc:
                return exc

        return list(await asyncio.gather(*(one(r) for r in requests)))

    async def delete(self, hubspot_id: str, *, event: EventRef | None = None) -> int:
        """POST ``contact.delete`` for the Lead and for the Contact."""

        async def one(kind: Kind) -> int:
            body = self._body("contact.delete", kind, hubspot_id, {}, event)
            response = await self._post(_message_id(event, kind, hubspot_id, body), body)
            if response.is_success:
                return 1
            if response.status_code in (404, 410):
                return 0
            raise _error(response)

        counts = await asyncio.gather(*(one(kind) for kind in _KINDS), return_exceptions=True)
        for count in counts:
            if isinstance(count, BaseException):
                raise count
        return sum(c for c in counts if isinstance(c, int))

    async def aclose(self) -> None:
        """Nothing to release: the injected ``http`` client is closed by its owner."""

    def _body(
        self,
        kind_of_change: str,
        kind: Kind,
        hubspot_id: str,
        fields: Mapping[str, Any],
        event: EventRef | None = None,
    ) -> bytes:
        occurred = event.occurred_at if event is not None else None
        return orjson.dumps(
            {
                "type": kind_of_change,
                "kind": kind,
                "hubspot_id": _hubspot_id(hubspot_id),
                "fields": dict(fields),
                "occurred_at": _iso(occurred, self._clock()),
            }
        )

    async def _post(self, message_id: str, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        async with self._semaphore:
            headers |= self._signer.headers(message_id, body, self._clock())
            return await counted_request(
                self._http,
                "POST",
                self._url,
                label="the webhook endpoint",
                on_call=self._on_call,
                content=body,
                headers=headers,
            )


def _message_id(event: EventRef | None, kind: Kind, hubspot_id: str, body: bytes) -> str:
    if event is None:  # not from a stored event: the content names the message
        return "msg_" + hashlib.sha256(body).hexdigest()[:32]
    replay = f"_r{event.delivery}" if event.delivery else ""
    return f"evt_{event.id}{replay}_{kind}"


def _hubspot_id(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _iso(occurred_ms: int | None, now: float) -> str:
    seconds = occurred_ms / 1000 if occurred_ms is not None else now
    when = datetime.fromtimestamp(seconds, tz=UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _answer_id(response: httpx.Response) -> str | None:
    data = json_or_none(response)
    value = data.get("id") if isinstance(data, dict) else None
    return str(value) if isinstance(value, str | int) and str(value) else None


def _error(response: httpx.Response) -> UpstreamError:
    status = response.status_code
    message = body_excerpt(response, _BODY_CHARS) or f"the webhook endpoint answered HTTP {status}"
    if status == 429:
        return RateLimited("http_429", message, retry_after(response))
    if status == 408 or status >= 500:
        return TransientError(f"http_{status}", message, retry_after(response))
    return PermanentError(f"http_{status}", message)
