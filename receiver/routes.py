"""Thin HTTP handlers: the webhook, health, readiness, status and metrics.

The webhook checks run in the SPEC's order: size (413), content type (415), signature
(401), JSON shape (400). The answer comes only after the events are committed.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from receiver.context import AppContext
from receiver.events import BadBatch, parse_body, to_new_events
from receiver.exceptions import SignatureError
from receiver.logging import get_logger
from receiver.responses import JSON, error
from receiver.signature import verify
from receiver.status import build_status

log = get_logger("receiver.routes")

JSON_TYPES = ("application/json", "text/json")


def ctx_of(request: Request) -> AppContext:
    """The app context of a request."""
    ctx: AppContext = request.app.state.ctx
    return ctx


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` bytes (the rest is not read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def signed_url(request: Request, public_url: str | None) -> str:
    """The URL HubSpot signed: ``PUBLIC_URL`` when set, else the request's own."""
    query = request.url.query
    if public_url:
        if query and "?" not in public_url:
            return f"{public_url}?{query}"
        return public_url
    return str(request.url)


async def webhook(request: Request) -> Response:
    """``POST /webhooks/hubspot``: verify, store durably, then answer."""
    ctx = ctx_of(request)
    started = time.perf_counter()
    try:
        return await _webhook(request, ctx)
    finally:
        ctx.metrics.ack_seconds.observe(time.perf_counter() - started)


async def _webhook(request: Request, ctx: AppContext) -> Response:
    body = await _read_limited(request, ctx.max_body)
    if body is None:
        return error(413, "payload_too_large", f"The body is larger than {ctx.max_body} bytes.")
    if not _is_json(request.headers.get("content-type")):
        return error(415, "unsupported_media_type", "Send the events as application/json.")
    try:
        verify(
            secret=ctx.secret,
            method=request.method,
            url=signed_url(request, ctx.settings.public_url),
            body=body,
            headers=request.headers,
            now_ms=int(ctx.clock() * 1000),
            max_age_s=ctx.settings.signature_max_age_s,
        )
    except SignatureError as exc:
        log.warning("signature_rejected", reason=str(exc))
        return error(401, "invalid_signature", f"{exc}.")
    try:
        items = parse_body(body)
    except BadBatch as exc:
        return error(400, "bad_request", f"{str(exc).capitalize()}.")
    events = to_new_events(items)
    try:
        result = await ctx.store.ingest(events, ctx.clock())
    except Exception:
        log.exception("ingest_failed", events=len(events))
        return error(
            503, "storage_unavailable", "The events could not be stored; HubSpot will retry."
        )
    m = ctx.metrics
    m.received.inc(len(events))
    m.accepted.inc(result.accepted)
    m.duplicate.inc(result.duplicates)
    m.invalid.inc(result.invalid)
    return JSON(
        {"accepted": result.accepted, "duplicates": result.duplicates, "invalid": result.invalid}
    )


async def healthz(request: Request) -> Response:
    """Liveness: the process serves."""
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: the database answers, the dispatcher runs, the backlog is not too old."""
    ctx = ctx_of(request)
    now = ctx.clock()
    checks: dict[str, Any] = {}
    try:
        await ctx.store.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"failing: {type(exc).__name__}"
    checks["dispatcher"] = "ok" if ctx.dispatcher.running(now) else "failing: stalled"
    limit = ctx.settings.ready_max_pending_age_s
    if limit and checks["database"] == "ok":
        oldest = await ctx.store.oldest_open_received_at()
        age = now - oldest if oldest is not None else 0.0
        checks["backlog"] = "ok" if age <= limit else f"failing: oldest pending is {age:.0f}s old"
    failing = [name for name, value in checks.items() if value != "ok"]
    if failing:
        return JSON(
            {
                "error": "not_ready",
                "message": "Not ready: " + ", ".join(f"{n} {checks[n]}" for n in failing) + ".",
                "checks": checks,
            },
            status_code=503,
        )
    return JSON({"status": "ready", "checks": checks})


async def status(request: Request) -> Response:
    """Counts, backlog age, last sync, stages, version and uptime."""
    ctx = ctx_of(request)
    extra = {}
    usage = getattr(ctx.target, "api_usage", None)
    if usage:
        extra["target_api_usage"] = {"used": usage[0], "limit": usage[1]}
    doc = await build_status(ctx.store, ctx.settings, ctx.clock(), ctx.started_at, extra)
    return JSON(doc)


async def metrics(request: Request) -> Response:
    """Prometheus text; queue figures are read from the store at scrape time."""
    ctx = ctx_of(request)
    m = ctx.metrics
    counts = await ctx.store.counts()
    for state in ("pending", "retrying", "synced", "skipped", "failed", "invalid"):
        m.queue_depth.labels(state=state).set(sum(counts.get(state, {}).values()))
    oldest = await ctx.store.oldest_open_received_at()
    m.oldest_pending.set(max(0.0, ctx.clock() - oldest) if oldest else 0)
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
