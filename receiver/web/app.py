"""The Starlette app. :func:`create_app` wires everything in the lifespan."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from receiver.dispatch.dispatcher import Dispatcher
from receiver.dispatch.sync_settings import LiveSyncSettings, stages_in_force
from receiver.hubspot.client import HubSpotClient
from receiver.hubspot.pacer import RequestPacer
from receiver.hubspot.search import ContactSearch
from receiver.hubspot.stages import StageCatalogue
from receiver.jobs.backfill import BackfillRunner
from receiver.jobs.reconcile import Reconciler
from receiver.jobs.yielding import WebhookLoad
from receiver.ops.alerts import Alerts
from receiver.ops.logging import RequestIdMiddleware, get_logger
from receiver.ops.metrics import Metrics
from receiver.ops.retention import start_retention
from receiver.ops.tasks import cancel_and_wait
from receiver.settings import Settings
from receiver.store.base import EventStore
from receiver.store.factory import make_store
from receiver.sync.mapping import hubspot_properties, merge_mapping
from receiver.sync.retry import RetryPolicy
from receiver.sync.rules import RoutingConfig
from receiver.targets.factory import TargetFactory, make_target
from receiver.web import health as routes
from receiver.web.context import AppContext
from receiver.web.responses import error
from receiver.web.webhook import INTERNAL_ERROR, WEBHOOK_PATH

log = get_logger("receiver.web.app")

UPSTREAM_TIMEOUT = httpx.Timeout(15.0, connect=5.0)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {
        404: "There is nothing at this path.",
        405: f"{request.method} is not allowed here.",
    }.get(exc.status_code, str(exc.detail))
    return error(exc.status_code, codes.get(exc.status_code, "http_error"), message)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", path=request.url.path)
    return error(500, "internal_error", INTERNAL_ERROR)


class StagesyncApp(Starlette):
    """Starlette, with ``POST /webhooks/hubspot`` served ahead of the middleware stack.

    The webhook is the hot path: at thousands of requests a second, passing through the
    error, request-id and exception middleware and the router cost as much as checking
    a signature. The endpoint does their work itself (see :mod:`receiver.web.webhook`);
    everything else, the webhook's other methods included, goes the usual way.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and scope["method"] == "POST":
            scope["app"] = self
            await routes.webhook(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _routes() -> list[BaseRoute]:
    from receiver.web.admin import admin_routes

    return [
        Route(WEBHOOK_PATH, routes.webhook, methods=["POST"]),
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/readyz", routes.readyz, methods=["GET"]),
        Route("/status", routes.status, methods=["GET"]),
        Route("/metrics", routes.metrics, methods=["GET"]),
        *admin_routes(),
    ]


def _build_context(
    settings: Settings,
    store: EventStore,
    client: httpx.AsyncClient,
    metrics: Metrics,
    clock: Callable[[], float],
    target_factory: TargetFactory,
) -> AppContext:
    """The clients, the target and the dispatcher around an open store."""
    hubspot = None
    search = None
    token = settings.hubspot_token
    # One pacer for every HubSpot call: batch reads and searches share the portal's budget.
    pacer = RequestPacer(settings.hubspot_rate_limit, 10.0)
    if token:
        hubspot = HubSpotClient(
            http=client,
            base_url=settings.hubspot_api_url,
            token=token,
            pacer=pacer,
            on_call=metrics.hubspot_call,
        )
        search = ContactSearch(
            http=client,
            base_url=settings.hubspot_api_url,
            token=token,
            pacer=pacer,
            on_call=metrics.hubspot_call,
        )
    target = target_factory(
        settings.target, settings.target_settings, store=store, http=client, metrics=metrics
    )
    mappings = {
        kind: merge_mapping(target.default_mapping(kind), settings.mapping.get(kind, {}))
        for kind in ("lead", "contact")
    }
    properties = hubspot_properties(*mappings.values())
    routing = RoutingConfig(
        lead_stages=frozenset(settings.lead_stages),
        contact_stages=frozenset(settings.contact_stages),
        on_delete=settings.on_delete,
        properties=frozenset(properties),
        promotion=settings.promotion,
        lead_sync=settings.lead_sync,
        contact_sync=settings.contact_sync,
    )
    live = LiveSyncSettings(store, settings, routing)
    alerts = None
    if settings.alert_webhook_url is not None:
        alerts = Alerts(
            http=client,
            url=settings.alert_webhook_url.get_secret_value(),
            store=store,
            interval_s=settings.alert_interval_s,
            backlog_s=settings.alert_backlog_s,
            clock=clock,
        )
    backfills = reconciler = None
    webhook_load = WebhookLoad()
    if search is not None:
        backfills = BackfillRunner(
            store=store,
            search=search,
            properties=properties,
            metrics=metrics,
            clock=clock,
            load=webhook_load,
            alerts=alerts,
        )
        if settings.reconcile_interval_s > 0:
            reconciler = Reconciler(
                store=store,
                search=search,
                properties=properties,
                stages=partial(stages_in_force, store, settings),
                interval_s=settings.reconcile_interval_s,
                metrics=metrics,
                clock=clock,
                load=webhook_load,
                alerts=alerts,
            )
    dispatcher = Dispatcher(
        store=store,
        target=target,
        hubspot=hubspot,
        routing=routing,
        live_routing=live.routing,
        alerts=alerts,
        retry=RetryPolicy(settings.retry_base_s, settings.retry_max_s, settings.max_attempts),
        mappings=mappings,
        metrics=metrics,
        lease_s=settings.lease_s,
        concurrency=settings.dispatch_concurrency,
        clock=clock,
        secrets=settings.secret_values(),
    )
    return AppContext(
        settings=settings,
        store=store,
        target=target,
        dispatcher=dispatcher,
        metrics=metrics,
        clock=clock,
        started_at=clock(),
        secret=settings.hubspot_client_secret.get_secret_value(),
        max_body=settings.max_body_bytes,
        sync_settings=live,
        stages=StageCatalogue(hubspot),
        alerts=alerts,
        backfills=backfills,
        reconciler=reconciler,
        webhook_load=webhook_load,
    )


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    http: httpx.AsyncClient | None = None,
    target_factory: TargetFactory = make_target,
) -> Starlette:
    """Build the app; the store, clients and dispatcher start in its lifespan.

    Args:
        settings: validated settings.
        clock: unix-seconds clock, injectable for tests.
        http: the client for HubSpot and the target (one is made when None).
        target_factory: builds the target from the settings and its collaborators
            (an embedding application may wrap or replace the configured one).
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics = Metrics()
        store = make_store(settings.database_url)
        await store.open()
        client = http or httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT)
        try:
            ctx = _build_context(settings, store, client, metrics, clock, target_factory)
        except BaseException:
            # The store's threads would keep the process alive after the failed start.
            if http is None:
                await client.aclose()
            await store.close()
            raise
        app.state.ctx = ctx
        dispatcher, target = ctx.dispatcher, ctx.target
        store.add_commit_listener(dispatcher.wake)
        await ctx.sync_settings.refresh()  # the saved settings before the first round
        dispatcher.start()
        jobs = [job for job in (ctx.backfills, ctx.reconciler) if job is not None]
        for job in jobs:
            job.start()
        background = _start_background(ctx)
        log.info(
            "service_started",
            target=target.name,
            database=store.name,
            hubspot_fetch=dispatcher.hubspot is not None,
        )
        try:
            yield
        finally:
            await cancel_and_wait(background)
            for job in jobs:
                await job.stop()
            await dispatcher.stop()
            await target.aclose()
            if http is None:
                await client.aclose()
            await store.close()
            log.info("service_stopped")

    handlers: dict[Any, Any] = {HTTPException: _http_error, Exception: _unexpected}
    return StagesyncApp(
        routes=_routes(),
        lifespan=lifespan,
        exception_handlers=handlers,
        middleware=[Middleware(RequestIdMiddleware)],  # request_id on every request's lines
    )


def _start_background(ctx: AppContext) -> list[Any]:
    tasks: list[Any] = start_retention(ctx.store, ctx.clock, int(ctx.settings.retention_days))
    tasks.append(asyncio.create_task(ctx.sync_settings.run(), name="sync-settings-poll"))
    if ctx.alerts is not None:
        tasks.append(asyncio.create_task(ctx.alerts.run(), name="alerts"))
    return tasks
