"""Prometheus metrics, on a registry of their own per app (no import-time globals).

Queue depth and the oldest pending age are read from the store when scraped, so
they are right even when another process (the CLI, a second instance) changed them.
"""

from __future__ import annotations

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

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return bytes(generate_latest(self.registry))
