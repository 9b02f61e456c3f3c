"""Prometheus metrics, on a registry of their own per app (no import-time globals).

Queue depth and the oldest pending age are read from the store when scraped, so
they are right even when another process (the CLI, a second instance) changed them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SYNC_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


def status_class(status: int | None) -> str:
    """``2xx``/``4xx``/``5xx`` for an HTTP status, ``error`` for no answer."""
    if status is None:
        return "error"
    label = f"{status // 100}xx"
    return label if label in ("2xx", "4xx", "5xx") else "error"


class Metrics:
    """Every stagesync metric, registered on ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "stagesync_events_received", "Events in signed, parsed webhook requests", registry=r
        )
        self.accepted = Counter("stagesync_events_accepted", "New events stored", registry=r)
        self.duplicate = Counter("stagesync_events_duplicate", "Events already stored", registry=r)
        self.invalid = Counter("stagesync_events_invalid", "Malformed events", registry=r)
        self.ack_seconds = Histogram(
            "stagesync_ack_seconds",
            "Webhook request handling time up to the answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outcomes = Counter(
            "stagesync_events_outcome",
            "Event outcomes by state and reason",
            ["state", "reason"],
            registry=r,
        )
        self.sync_seconds = Histogram(
            "stagesync_sync_seconds",
            "Time from an event's receipt to its sync",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("stagesync_queue_depth", "Events by state", ["state"], registry=r)
        self.oldest_pending = Gauge(
            "stagesync_oldest_pending_seconds",
            "Age of the oldest pending or retrying event (0 when none)",
            registry=r,
        )
        self.upstream_calls = Counter(
            "stagesync_upstream_calls",
            "Calls to HubSpot and to the target by status class",
            ["api", "status"],
            registry=r,
        )
        self.retries = Counter("stagesync_retries_scheduled", "Retries scheduled", registry=r)
        self.target_api_usage = Gauge(
            "stagesync_target_api_usage_ratio",
            "Share of the target's daily API limit used, as it last reported (0 when unknown)",
            registry=r,
        )
        self.backfill_contacts = Counter(
            "stagesync_backfill_contacts", "Contacts queued by backfills", registry=r
        )
        self.reconcile_runs = Counter(
            "stagesync_reconcile_runs", "Reconciliation passes by result", ["result"], registry=r
        )
        self.reconcile_lag = Gauge(
            "stagesync_reconcile_lag_seconds",
            "Now minus the reconciliation watermark (0 before the first pass)",
            registry=r,
        )
        self.lease_lost = Counter(
            "stagesync_rounds_refused",
            "Contacts whose round the store refused: their lease was lost before the record",
            registry=r,
        )

    def hubspot_call(self, status: str) -> None:
        """Count one HubSpot call by status class."""
        self.upstream_calls.labels(api="hubspot", status=status).inc()

    def target_call(self, status: str) -> None:
        """Count one target call by status class."""
        self.upstream_calls.labels(api="target", status=status).inc()

    def observe_target_api(self, status: Mapping[str, Any] | None) -> None:
        """Set the API usage gauge from a target's ``api_status()``."""
        used = status.get("used") if status else None
        limit = status.get("limit") if status else None
        if isinstance(used, int) and isinstance(limit, int) and limit > 0:
            self.target_api_usage.set(used / limit)
        else:
            self.target_api_usage.set(0.0)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return bytes(generate_latest(self.registry))
