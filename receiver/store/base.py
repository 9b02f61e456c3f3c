"""The ``EventStore`` protocol, shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from receiver.models import (
    OPEN_STATES,
    REPLAYABLE_STATES,
    ClaimedContact,
    ContactState,
    ContactUpdate,
    EventFilter,
    HistoryEntry,
    NewEvent,
    Outcome,
    StoredEvent,
    TargetRecord,
)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one webhook request's events became once committed."""

    accepted: int
    duplicates: int
    invalid: int


@dataclass(frozen=True, slots=True)
class ReplayRefusal:
    """Why an event could not be replayed (409 for the API)."""

    event_id: int
    reason: str


def split_replayable(
    event_ids: Sequence[int], states: Mapping[int, str]
) -> tuple[list[ReplayRefusal], list[int]]:
    """Which events a replay may send back to pending, and why the others may not.

    ``states`` maps the ids that exist to their state. Only ``REPLAYABLE_STATES`` may
    be: open events are already queued, and an invalid event has nothing to process.
    """
    refusals = []
    ok = []
    for event_id in event_ids:
        state = states.get(event_id)
        if state is None:
            refusals.append(ReplayRefusal(event_id, "no such event"))
        elif state in REPLAYABLE_STATES:
            ok.append(event_id)
        elif state in OPEN_STATES:
            refusals.append(ReplayRefusal(event_id, f"the event is {state}: already queued"))
        else:
            refusals.append(ReplayRefusal(event_id, "an invalid event cannot be processed"))
    return refusals, ok


class EventStore(Protocol):
    """Durable storage for events, per-contact sync state and dry-run records.

    Every method takes ``now`` (unix seconds) from the caller where time matters,
    so the store never reads the clock itself.
    """

    name: str  # "sqlite" or "postgres"

    async def open(self) -> None:
        """Connect, and create or migrate the schema."""
        ...

    async def close(self) -> None:
        """Flush pending commits and disconnect."""
        ...

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the event loop) when new or replayed events are committed.

        The PostgreSQL store also calls it on another instance's commit (LISTEN/NOTIFY).
        """
        ...

    async def ping(self) -> None:
        """Raise if the database does not answer."""
        ...

    async def ingest(self, events: Sequence[NewEvent], now: float) -> IngestResult:
        """Store new events durably, skipping duplicates; returns after the commit.

        Concurrent calls share one transaction (group commit).
        """
        ...

    async def claim(
        self, owner: str, now: float, lease_s: float, max_contacts: int
    ) -> list[ClaimedContact]:
        """Lease up to ``max_contacts`` contacts that have due events, with those events.

        A contact leased by anyone (this process or another) is never returned until
        its lease is released by ``record`` or expires.
        """
        ...

    async def record(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        contacts: Sequence[ContactUpdate],
        release: Sequence[int],
        now: float,
    ) -> list[int]:
        """Record outcomes and contact sync state, then release the contacts' leases.

        Fenced: only the rounds of the contacts of ``release`` whose lease ``owner``
        still holds at ``now`` are written, checked in the same transaction that writes.
        Returns the other contacts of ``release`` (refused: nothing of theirs is
        written, and their events stay due, to be claimed again). A contact's
        ``last_occurred_at`` never moves backwards, whoever writes.
        """
        ...

    async def next_due_at(self, now: float) -> float | None:
        """Earliest ``next_attempt_at`` of a retrying event, or None."""
        ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """Count of events per state and reason (``""`` for none), without a scan."""
        ...

    async def oldest_open_received_at(self, due_at: float | None = None) -> float | None:
        """``received_at`` of the oldest pending or retrying event.

        With ``due_at``, only events whose next attempt is due by then: work waiting on
        the dispatcher, not on a backoff or a rate limit.
        """
        ...

    async def last_synced_at(self) -> float | None:
        """When an event last ended ``synced``."""
        ...

    async def get_event(self, event_id: int) -> StoredEvent | None:
        """One event, or None."""
        ...

    async def history(self, event_id: int) -> list[HistoryEntry]:
        """The attempts of one event, oldest first."""
        ...

    async def list_events(
        self, flt: EventFilter, limit: int, before_id: int | None = None
    ) -> list[StoredEvent]:
        """Events matching ``flt``, newest (highest id) first, with id < ``before_id``."""
        ...

    async def replay(self, event_ids: Sequence[int], now: float) -> list[ReplayRefusal]:
        """Send events back to ``pending``; refuses (and leaves) open or leased ones."""
        ...

    async def replay_matching(
        self,
        flt: EventFilter,
        now: float,
        chunk: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Send every closed event matching ``flt`` back to pending, in chunks; the count."""
        ...

    async def count_matching(self, flt: EventFilter) -> int:
        """How many events match ``flt``."""
        ...

    async def purge(self, flt: EventFilter, chunk: int = 1000) -> int:
        """Delete events matching ``flt`` in chunks; the count."""
        ...

    async def get_contact(self, object_id: int) -> ContactState | None:
        """The ``ContactState`` of one contact, or None."""
        ...

    async def upsert_records(
        self, items: Sequence[tuple[str, str, dict[str, Any]]], now: float
    ) -> list[tuple[str, bool]]:
        """Dry-run target: merge fields into records ``(kind, hubspot_id, fields)``.

        One transaction; returns each record's id and whether it was created.
        """
        ...

    async def delete_records(self, hubspot_id: str) -> int:
        """Dry-run target: delete the Lead and Contact for a HubSpot id."""
        ...

    async def list_records(self, kind: str | None = None) -> list[TargetRecord]:
        """Dry-run target: what it holds, newest upsert first."""
        ...

    async def start_admin_session(self, session_id: str, expires_at: float, now: float) -> None:
        """Admin page: remember a login until ``expires_at``; forget expired ones."""
        ...

    async def admin_session_open(self, session_id: str, now: float) -> bool:
        """Admin page: whether a login is remembered and has not expired."""
        ...

    async def end_admin_session(self, session_id: str) -> None:
        """Admin page: forget a login (its logout)."""
        ...
