"""The status figures shared by ``GET /status``, ``stagesync status`` and the metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from receiver import __version__
from receiver.models import STATES, BackfillJob
from receiver.settings import Settings
from receiver.store.base import EventStore


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC with a ``Z``, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def backfill_json(job: BackfillJob) -> dict[str, Any]:
    """A job as the admin API and ``/status`` show it."""
    return {
        "id": job.id,
        "state": job.state,
        "stages": list(job.stages),
        "found": job.found,
        "queued": job.queued,
        "pages": job.pages,
        "hubspot_calls": job.calls,
        "cancel_requested": job.cancel_requested,
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "error": job.error,
    }


async def build_status(
    store: EventStore,
    settings: Settings,
    now: float,
    started_at: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``/status`` document. Holds no secret: only counts, stages and names."""
    counts_by_reason = await store.counts()
    counts = {state: sum(counts_by_reason.get(state, {}).values()) for state in STATES}
    skipped = {r: n for r, n in counts_by_reason.get("skipped", {}).items() if n}
    oldest = await store.oldest_open_received_at()
    doc: dict[str, Any] = {
        "counts": counts,
        "skipped_by_reason": skipped,
        "oldest_pending_age_s": round(max(0.0, now - oldest), 3) if oldest else None,
        "last_sync_at": iso(await store.last_synced_at()),
        "target": settings.target,
        "lead_stages": list(settings.lead_stages),
        "contact_stages": list(settings.contact_stages),
        "version": __version__,
        "uptime_s": round(now - started_at, 3) if started_at is not None else None,
        "database": store.name,
    }
    reconcile = await store.reconcile_state()
    doc["reconcile"] = {
        "last_run_at": iso(reconcile.last_run_at),
        "watermark": iso(reconcile.watermark),
        "found": reconcile.found,
    }
    running = [job for job in await store.list_backfills(1) if job.state == "running"]
    doc["backfill"] = backfill_json(running[0]) if running else None
    if extra:
        doc.update(extra)
    return doc
