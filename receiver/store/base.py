"""The ``EventStore`` protocol, shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from receiver.models import (
    OPEN_STATES,
    REPLAYABLE_STATES,
    BackfillJob,
    ClaimedContact,
    ContactState,
    ContactUpdate,
    EventFilter,
    FailureGroup,
    HistoryEntry,
    NewEvent,
    Outcome,
    ReconcileState,
    SavedSyncSettings,
    StoredEvent,
    SyncSettingsChange,
    SyncValues,
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

    async def renew_leases(
        self, owner: str, object_ids: Sequence[int], now: float, until: float
    ) -> list[int]:
        """Move ``owner``'s leases of ``object_ids`` that still hold at ``now`` on to
        ``until``; returns the contacts renewed (a lease lost meanwhile is not taken back).
        """
        ...

    async def next_due_at(self, now: float) -> float | None:
        """Earliest ``next_attempt_at`` of a retrying event, or None."""
        ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """Count of events per state and reason (``""`` for none), without a scan."""
        ...

    async def oldest_open_received_at(
        self, due_at: float | None = None, *, in_flight: bool = True
    ) -> float | None:
        """``received_at`` of the oldest pending or retrying event.

        With ``due_at``, only events whose next attempt is due by then: work waiting on
        the dispatcher, not on a backoff or a rate limit. With ``due_at`` and not
        ``in_flight``, also not those of a contact leased then (a claim has them).
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

    async def load_sync_settings(self) -> SavedSyncSettings | None:
        """The saved sync settings, or None while nothing was ever saved."""
        ...

    async def sync_settings_version(self) -> int:
        """The sync settings' version (0: nothing saved): one cheap read, polled."""
        ...

    async def save_sync_settings(
        self,
        values: SyncValues | None,
        expected_version: int,
        at: float,
        by: str,
        changes: dict[str, Any],
    ) -> SavedSyncSettings | None:
        """Save ``values`` (None: a reset to the configured values) with a history entry,
        if the version is still ``expected_version``; None on a conflict. Durable."""
        ...

    async def sync_settings_history(
        self, limit: int = 100, before: int | None = None
    ) -> list[SyncSettingsChange]:
        """The sync settings' changes, newest first; with ``before``, only older versions."""
        ...

    async def failure_groups(self, samples: int = 5, limit: int = 50) -> list[FailureGroup]:
        """Failed events grouped by error code, largest group first."""
        ...

    # -- backfill jobs and reconciliation (receiver.jobs) ------------------------------

    async def create_backfill(self, stages: Sequence[str], now: float) -> BackfillJob | None:
        """Start a backfill of ``stages``; None when one is running already (any instance)."""
        ...

    async def take_backfill(self, owner: str, now: float, lease_s: float) -> BackfillJob | None:
        """Lease the running backfill for ``lease_s``, unless another owner holds it."""
        ...

    async def advance_backfill(
        self,
        job_id: int,
        owner: str,
        counts: tuple[int, int, int, int],
        cursor: dict[str, Any],
        now: float,
        lease_s: float,
    ) -> BackfillJob | None:
        """Store ``(found, queued, pages, calls)`` and the cursor after a page and renew the
        lease; None when ``owner`` no longer holds the job."""
        ...

    async def finish_backfill(
        self, job_id: int, owner: str, state: str, error: str | None, now: float
    ) -> None:
        """End the backfill as ``state`` (``done``, ``failed`` or ``cancelled``)."""
        ...

    async def release_backfill(self, job_id: int, owner: str) -> None:
        """Give up the backfill's lease without ending it (a clean stop)."""
        ...

    async def cancel_backfill(self, job_id: int, now: float) -> BackfillJob | None:
        """Ask a running backfill to stop after its current page; one that no instance
        runs is cancelled at once. The job as it is then, or None if unknown."""
        ...

    async def get_backfill(self, job_id: int) -> BackfillJob | None:
        """One backfill, or None."""
        ...

    async def list_backfills(self, limit: int) -> list[BackfillJob]:
        """The newest ``limit`` backfills, newest first."""
        ...

    async def backfill_outcomes(self, job: BackfillJob) -> dict[str, int]:
        """Backfill events received since ``job`` started, counted by state."""
        ...

    async def take_reconcile(self, owner: str, now: float, lease_s: float) -> ReconcileState | None:
        """Lease the reconciliation pass for ``lease_s``; None while another holds it."""
        ...

    async def finish_reconcile(
        self, owner: str, watermark: float | None, found: int, now: float
    ) -> None:
        """Store a pass's watermark (None keeps the old one) and count, and release it."""
        ...

    async def reconcile_state(self) -> ReconcileState:
        """The stored watermark, last pass and what it found."""
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
