"""Thin HTTP handlers: the webhook, health, readiness, status and metrics.

The webhook, the hot path, is a plain ASGI endpoint of its own in :mod:`receiver.web.webhook`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from receiver.dispatch.sync_settings import status_fields_of
from receiver.errors import StoreError
from receiver.ops.logging import get_logger
from receiver.ops.status import build_status
from receiver.web.context import AppContext
from receiver.web.responses import JSON
from receiver.web.webhook import webhook as webhook

log = get_logger("receiver.web.health")


def ctx_of(request: Request) -> AppContext:
    """The app context of a request."""
    ctx: AppContext = request.app.state.ctx
    return ctx


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
    except StoreError as exc:  # our own words, safe to show
        checks["database"] = f"failing: {exc}"
    except Exception as exc:
        checks["database"] = f"failing: {type(exc).__name__}"
    checks["dispatcher"] = "ok" if ctx.dispatcher.running(now) else "failing: stalled"
    limit = ctx.settings.ready_max_pending_age_s
    if limit and checks["database"] == "ok":
        # Only work that is due counts: events waiting out a backoff or a rate limit
        # (a CRM outage, HubSpot's daily limit) are expected to age.
        oldest = await ctx.store.oldest_open_received_at(due_at=now)
        age = now - oldest if oldest is not None else 0.0
        checks["backlog"] = (
            "ok" if age <= limit else f"failing: the oldest due event is {age:.0f}s old"
        )
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
    extra = {"target_api": ctx.target.api_status()}
    extra.update(status_fields_of(ctx.sync_settings.current))  # what this instance uses
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
    m.observe_target_api(ctx.target.api_status())
    reconcile = await ctx.store.reconcile_state()
    watermark = reconcile.watermark
    m.reconcile_lag.set(max(0.0, ctx.clock() - watermark) if watermark is not None else 0)
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
