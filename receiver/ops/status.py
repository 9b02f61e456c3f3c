"""The status figures shared by ``GET /status``, ``stagesync status`` and the metrics."""

from __future__ import annotations

from typing import Any

from receiver import __version__
from receiver.models import STATES
from receiver.ops.presenters import iso
from receiver.ops.sync_settings import status_fields
from receiver.settings import Settings
from receiver.store.base import EventStore


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
    doc.update(await status_fields(store, settings))
    if extra:
        doc.update(extra)
    return doc
