"""``POST /webhooks/hubspot``, the hot path, as a plain ASGI endpoint.

The checks run in the SPEC's order: size (413), content type (415), signature (401),
JSON shape (400). The answer comes only after the events are committed. A sender that
disconnects before its body is complete gets no answer and leaves no error behind.

Why plain ASGI rather than a Starlette function endpoint: at thousands of requests per
second, building a ``Request``, its ``Headers`` and ``URL``, and wrapping ``send`` for
the exception handlers cost as much as the work itself. Here the headers are read once
from the scope, the signed URL is computed by Starlette once per distinct request
target and then reused, and the 200 answer is sent as two ASGI messages. The app
serves it ahead of its middleware stack (:class:`receiver.web.app.StagesyncApp`), so the
endpoint answers its own unexpected errors with the same JSON 500 as the app's handler,
and names its request id in its log lines; error answers are the same
:func:`receiver.web.responses.error` responses as everywhere else.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.datastructures import URL
from starlette.types import Receive, Scope, Send

from receiver.errors import SignatureError
from receiver.hubspot.payload import (
    SLICE,
    BadBatch,
    parse_body,
    to_new_events,
    to_new_events_yielding,
)
from receiver.hubspot.signature import verify
from receiver.ops.logging import get_logger, request_id
from receiver.web.context import AppContext
from receiver.web.numbers import parse_length
from receiver.web.responses import error, sentence

log = get_logger("receiver.web.webhook")

WEBHOOK_PATH = "/webhooks/hubspot"
JSON_TYPES = ("application/json", "text/json")
INTERNAL_ERROR = "Something went wrong on our side; it has been logged."
_OK_HEADERS = [(b"content-type", b"application/json")]
# Distinct (scheme, server, host, path, query, public URL) seen; HubSpot uses one.
_URL_CACHE_SIZE = 256
_signed_urls: dict[tuple[Any, ...], str] = {}
# The sender went away before the body was complete: there is no one to answer.
_GONE = object()
# How much of an oversized body is read (and dropped) so that the sender sees the 413.
DRAIN_BYTES = 64 * 1024
# A 413 before the sender finished closes the connection: kept alive, uvicorn would
# read the rest of the body.
_CLOSE = {"Connection": "close"}


def _headers(scope: Scope) -> dict[str, str]:
    """Lower-case header names to values; the first of repeated headers wins."""
    out: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = key.decode("latin-1")
        if name not in out:
            out[name] = value.decode("latin-1")
    return out


class _TooLarge:
    """The body passed the limit; ``drained`` when the sender had finished anyway."""

    def __init__(self, drained: bool) -> None:
        self.drained = drained


async def _read_limited(receive: Receive, declared: str | None, limit: int) -> Any:
    """The body; a :class:`_TooLarge` once it passes ``limit`` bytes; or ``_GONE``.

    Nothing past the limit is kept. What the sender still has in flight is read and
    dropped up to ``DRAIN_BYTES`` so that it can read the 413; past that the answer
    closes the connection instead (a kept-alive connection would make uvicorn read
    the rest, however long).
    """
    size = parse_length(declared) if declared is not None else None
    if size is not None and size > limit:
        if size > limit + DRAIN_BYTES:
            return _TooLarge(drained=False)
        return await _drain(receive, 0)
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _GONE
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            return await _drain(receive, size - limit) if more else _TooLarge(drained=True)
        if chunk:
            chunks.append(chunk)
        if not more:
            return b"".join(chunks)


async def _drain(receive: Receive, dropped: int) -> Any:
    while dropped <= DRAIN_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _GONE
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return _TooLarge(drained=True)
    return _TooLarge(drained=False)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def signed_url(scope: Scope, host: str | None, public_url: str | None) -> str:
    """The URL HubSpot signed: ``PUBLIC_URL`` (plus the query) when set, else the request's.

    ``host`` is the request's Host header. The request's URL is built by Starlette, as
    ``request.url`` would be, and kept for the next request with the same target.
    """
    key = (
        scope.get("scheme"),
        scope.get("server"),
        host,
        scope["path"],
        scope.get("query_string"),
        public_url,
    )
    url = _signed_urls.get(key)
    if url is None:
        url = _signed_url(URL(scope=scope), public_url)
        if len(_signed_urls) >= _URL_CACHE_SIZE:
            _signed_urls.clear()
        _signed_urls[key] = url
    return url


def _signed_url(url: URL, public_url: str | None) -> str:
    query = url.query
    if public_url:
        if query and "?" not in public_url:
            return f"{public_url}?{query}"
        return public_url
    return str(url)


class WebhookEndpoint:
    """``POST /webhooks/hubspot``: verify, store durably, then answer.

    An instance, not a function, so that Starlette's ``Route`` serves it as an ASGI app.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx: AppContext = scope["app"].state.ctx
        started = time.perf_counter()
        try:
            answer = await _webhook(scope, receive, ctx)
        except Exception:
            log.exception("unhandled_error", path=scope["path"], request_id=request_id(scope))
            answer = error(500, "internal_error", INTERNAL_ERROR)
        finally:
            ctx.metrics.ack_seconds.observe(time.perf_counter() - started)
        if answer is _GONE:
            return
        if isinstance(answer, bytes):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode()), *_OK_HEADERS],
                }
            )
            await send({"type": "http.response.body", "body": answer})
        else:
            await answer(scope, receive, send)


webhook = WebhookEndpoint()


async def _webhook(scope: Scope, receive: Receive, ctx: AppContext) -> Any:
    """The 200 body as bytes, an error response, or ``_GONE``."""
    headers = _headers(scope)
    body = await _read_limited(receive, headers.get("content-length"), ctx.max_body)
    if body is _GONE:
        return _GONE
    if isinstance(body, _TooLarge):
        message = f"The body is larger than {ctx.max_body} bytes."
        return error(413, "payload_too_large", message, headers=None if body.drained else _CLOSE)
    if not _is_json(headers.get("content-type")):
        return error(415, "unsupported_media_type", "Send the events as application/json.")
    try:
        verify(
            secret=ctx.secret,
            method=scope["method"],
            url=signed_url(scope, headers.get("host"), ctx.settings.public_url),
            body=body,
            headers=headers,
            now_ms=int(ctx.clock() * 1000),
            max_age_s=ctx.settings.signature_max_age_s,
        )
    except SignatureError as exc:
        log.warning("signature_rejected", reason=str(exc), request_id=request_id(scope))
        return error(401, "invalid_signature", sentence(str(exc)))
    try:
        items = parse_body(body)
    except BadBatch as exc:
        return error(400, "bad_request", sentence(str(exc)))
    # A large batch is validated in slices between which other requests get the loop.
    events = to_new_events(items) if len(items) <= SLICE else await to_new_events_yielding(items)
    m = ctx.metrics
    # Counted before the commit: "received" is every event of a signed, parsed request,
    # including those of a request the store then refuses.
    m.received.inc(len(events))
    ctx.webhook_load.note()
    try:
        result = await ctx.store.ingest(events, ctx.clock())
    except Exception:
        log.exception("ingest_failed", events=len(events), request_id=request_id(scope))
        return error(
            503, "storage_unavailable", "The events could not be stored; HubSpot will retry."
        )
    # Each inc takes a lock; most answers have no duplicates and no invalid events.
    if result.accepted:
        m.accepted.inc(result.accepted)
        ctx.dispatcher.arrived(result.accepted)
    if result.duplicates:
        m.duplicate.inc(result.duplicates)
    if result.invalid:
        m.invalid.inc(result.invalid)
    return orjson.dumps(
        {"accepted": result.accepted, "duplicates": result.duplicates, "invalid": result.invalid}
    )
