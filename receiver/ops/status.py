"""The status figures shared by ``GET /status``, ``stagesync status`` and the metrics."""

from __future__ import annotations

from typing import Any, Protocol

from receiver import __version__
from receiver.models import STATES, BackfillJob, ReconcileState
from receiver.ops.presenters import iso


class StatusSettings(Protocol):
    """The settings the status shows (``receiver.settings.Settings`` fits)."""

    @property
    def target(self) -> str:
        """The target's name."""
        ...

    @property
    def lead_stages(self) -> list[str]:
        """Stages synced as Leads."""
        ...

    @property
    def contact_stages(self) -> list[str]:
        """Stages synced as Contacts."""
        ...


class StatusSource(Protocol):
    """What the status figures read from the event store (any ``EventStore`` fits).

    A port, so that operations code sits below the store rather than beside it.
    """

    name: str

    async def counts(self) -> dict[str, dict[str, int]]:
        """Events per state, then per reason."""
        ...

    async def oldest_open_received_at(self) -> float | None:
        """When the oldest pending or retrying event was received."""
        ...

    async def last_synced_at(self) -> float | None:
        """When an event last ended ``synced``."""
        ...

    async def reconcile_state(self) -> ReconcileState:
        """Reconciliation's watermark, last pass and what it found."""
        ...

    async def list_backfills(self, limit: int) -> list[BackfillJob]:
        """The newest backfills, newest first."""
        ...


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
    store: StatusSource,
    settings: StatusSettings,
    now: float,
    started_at: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``/status`` document. Holds no secret: only counts, stages and names.

    ``extra`` adds or overrides keys: the sync settings in force, the target's API use.
    """
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
