"""What the running app holds: settings, store, dispatcher, metrics, clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from receiver.dispatch.dispatcher import Dispatcher
from receiver.dispatch.sync_settings import LiveSyncSettings
from receiver.hubspot.stages import StageCatalogue
from receiver.jobs.backfill import BackfillRunner
from receiver.jobs.reconcile import Reconciler
from receiver.jobs.yielding import WebhookLoad
from receiver.ops.alerts import Alerts
from receiver.ops.metrics import Metrics
from receiver.settings import Settings
from receiver.store.base import EventStore
from receiver.targets.base import Target


@dataclass
class AppContext:
    """Built in the lifespan by :func:`receiver.web.app.create_app`; read by the routes."""

    settings: Settings
    store: EventStore
    target: Target
    dispatcher: Dispatcher
    metrics: Metrics
    clock: Callable[[], float]
    started_at: float
    secret: str
    max_body: int
    sync_settings: LiveSyncSettings
    stages: StageCatalogue
    alerts: Alerts | None
    #: None without a HubSpot token, or (reconciler) with RECONCILE_INTERVAL_S=0
    backfills: BackfillRunner | None = None
    reconciler: Reconciler | None = None
    #: The webhook requests the jobs give way to (noted by the webhook endpoint)
    webhook_load: WebhookLoad = field(default_factory=WebhookLoad)
