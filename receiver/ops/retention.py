"""Retention: delete closed events older than ``RETENTION_DAYS``, in small batches.

Only ``synced``, ``skipped`` and ``invalid`` events go, judged by when they were
received. ``failed`` events stay until they are replayed or purged by hand
(``stagesync purge --state failed --before D``); open events are never touched. A sweep
runs when the service starts and then every hour. Each batch is its own short
transaction, so ingest and dispatch carry on between batches. ``RETENTION_DAYS=0``
keeps everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from receiver.models import EventFilter
from receiver.ops.logging import get_logger

log = get_logger("receiver.ops.retention")

EXPIRING_STATES = ("synced", "skipped", "invalid")
INTERVAL_S = 3600.0
BATCH = 500
DAY_S = 86400.0


class Purger(Protocol):
    """The one store operation retention needs (any ``EventStore`` fits)."""

    async def purge(self, flt: EventFilter, chunk: int = 1000) -> int:
        """Delete matching events and their history in chunks; returns how many."""
        ...


def retention_filter(now: float, days: int) -> EventFilter:
    """The events a sweep at ``now`` deletes: closed, not failed, received before the cutoff."""
    return EventFilter(states=EXPIRING_STATES, until=now - days * DAY_S)


async def sweep(store: Purger, now: float, days: int, batch: int = BATCH) -> int:
    """Delete expired events; returns how many."""
    deleted = await store.purge(retention_filter(now, days), chunk=batch)
    if deleted:
        log.info("retention_purged", events=deleted, days=days)
    return deleted


async def _loop(store: Purger, clock: Callable[[], float], days: int, interval_s: float) -> None:
    while True:
        try:
            await sweep(store, clock(), days)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A failed sweep is retried at the next interval; nothing is lost by waiting.
            log.exception("retention_failed")
        await asyncio.sleep(interval_s)


def start_retention(
    store: Purger, clock: Callable[[], float], days: int
) -> list[asyncio.Task[None]]:
    """Start the retention task (none when ``days`` is 0); returns the tasks."""
    if days <= 0:
        log.info("retention_disabled")
        return []
    # INTERVAL_S is read here, not bound as a default, so tests can shorten it.
    return [asyncio.create_task(_loop(store, clock, days, INTERVAL_S), name="retention")]
