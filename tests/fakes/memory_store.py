"""The in-memory :class:`~receiver.store.base.EventStore` fake for unit tests.

:class:`InMemoryStore` has the semantics the dispatcher relies on: due events,
per-contact leases that only ``record`` (or time) releases, outcomes that count attempts
and write history, and contact sync state. Import it from :mod:`tests.fakes.doubles`.

It runs in the store suite (``tests/integration/test_store.py``) as a third backend, so it
answers as the real stores do, and shares their rules: which events a replay refuses and
why (``split_replayable``), the chunked loops of replay and purge, NUL characters made
U+FFFD in recorded texts (``storable``). It keeps nothing across a close.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from receiver.models import (
    OPEN_STATES,
    REPLAYABLE_STATES,
    ClaimedContact,
    ContactState,
    ContactUpdate,
    EventFilter,
    FailureGroup,
    HistoryEntry,
    NewEvent,
    Outcome,
    SavedSyncSettings,
    StoredEvent,
    SyncSettingsChange,
    SyncValues,
    TargetRecord,
)
from receiver.store.base import IngestResult, ReplayRefusal, split_replayable
from receiver.store.replay import purge_in_chunks, replay_in_chunks
from receiver.store.rows import history_outcome, raw_document, storable
from tests.fakes.memory_jobs import InMemoryJobs


@dataclass
class _Row:
    event: StoredEvent
    next_attempt_at: float = 0.0
    coalesced_into: int | None = None


def _matches(event: StoredEvent, flt: EventFilter) -> bool:
    return (
        (flt.state is None or event.state == flt.state)
        and (not flt.states or event.state in flt.states)
        and (flt.object_id is None or event.object_id == flt.object_id)
        and (flt.since is None or event.received_at >= flt.since)
        and (flt.until is None or event.received_at < flt.until)
        and (flt.error_code is None or (event.last_error_code or "") == flt.error_code)
    )


class InMemoryStore(InMemoryJobs):
    """An :class:`~receiver.store.base.EventStore` in dictionaries; ``claims`` and
    ``records`` count the calls, ``leases`` maps a contact to ``(owner, until)``."""

    name = "memory"

    def __init__(self) -> None:
        self.rows: dict[int, _Row] = {}
        self.keys: set[bytes] = set()
        self.history_rows: dict[int, list[HistoryEntry]] = defaultdict(list)
        self.contacts: dict[int, ContactState] = {}
        self.leases: dict[int, tuple[str, float]] = {}
        self.records_held: dict[tuple[str, str], TargetRecord] = {}
        self.admin_sessions: dict[str, float] = {}
        self.claims = 0
        self.records = 0
        self.synced_at: float | None = None
        self._listeners: list[Callable[[], None]] = []
        self._next_id = 1
        self.saved_sync: SavedSyncSettings | None = None
        self.sync_history: list[SyncSettingsChange] = []

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each ingest and replay."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    async def ping(self) -> None:
        """Always answers."""

    # -- ingest and dispatch ---------------------------------------------------------

    async def ingest(self, events: Sequence[NewEvent], now: float) -> IngestResult:
        """Store new events, skipping duplicate keys."""
        accepted = duplicates = invalid = 0
        for new in events:
            if new.dedup_key in self.keys:
                duplicates += new.invalid_error is None
                continue
            self.keys.add(new.dedup_key)
            event_id = self._next_id
            self._next_id += 1
            bad = new.invalid_error is not None
            self.rows[event_id] = _Row(
                StoredEvent(
                    id=event_id,
                    state="invalid" if bad else "pending",
                    reason=None,
                    object_id=None if bad else new.object_id,
                    subscription_type=None if bad else new.subscription_type,
                    occurred_at=None if bad else new.occurred_at,
                    stage=None if bad else new.stage,
                    attempts=0,
                    last_error_code="invalid_event" if bad else None,
                    last_error_message=new.invalid_error,
                    received_at=now,
                    updated_at=now,
                    target_kind=None,
                    target_id=None,
                    raw=raw_document(new.raw),
                )
            )
            invalid += bad
            accepted += not bad
        self._notify()
        return IngestResult(accepted, duplicates, invalid)

    def _leased(self, object_id: int | None, now: float) -> bool:
        lease = self.leases.get(object_id)
        return lease is not None and lease[1] > now

    def _due(self, now: float) -> list[_Row]:
        return [
            r
            for r in sorted(self.rows.values(), key=lambda r: r.event.id)
            if r.event.state in OPEN_STATES and r.next_attempt_at <= now
        ]

    async def claim(
        self, owner: str, now: float, lease_s: float, max_contacts: int
    ) -> list[ClaimedContact]:
        """Lease up to ``max_contacts`` unleased contacts with due events, oldest first."""
        self.claims += 1
        ids: list[int] = []
        for row in self._due(now):
            object_id = row.event.object_id
            if object_id is None or object_id in ids or self._leased(object_id, now):
                continue
            ids.append(object_id)
            if len(ids) == max_contacts:
                break
        due = self._due(now)
        out = []
        for object_id in ids:
            self.leases[object_id] = (owner, now + lease_s)
            events = sorted(
                (r.event for r in due if r.event.object_id == object_id),
                key=lambda e: (e.occurred_at or 0, e.id),
            )
            out.append(ClaimedContact(object_id, tuple(events), self.contacts.get(object_id)))
        return out

    async def renew_leases(
        self, owner: str, object_ids: Sequence[int], now: float, until: float
    ) -> list[int]:
        """Move the leases ``owner`` still holds on to ``until``."""
        renewed = []
        for object_id in sorted(set(object_ids)):
            held_by, held_until = self.leases.get(object_id, ("", 0.0))
            if held_by == owner and held_until > now:
                self.leases[object_id] = (owner, until)
                renewed.append(object_id)
        return renewed

    async def record(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        contacts: Sequence[ContactUpdate],
        release: Sequence[int],
        now: float,
    ) -> list[int]:
        """Apply outcomes and contact state, then release ``owner``'s leases; the
        contacts of ``release`` whose lease ``owner`` lost are refused and returned."""
        self.records += 1
        refused = sorted(
            i for i in set(release)
            if not (self.leases.get(i, ("", 0.0))[0] == owner and self.leases[i][1] > now)
        )  # fmt: skip
        outcomes = [o for o in outcomes if self.rows[o.event_id].event.object_id not in refused]
        contacts = [c for c in contacts if c.object_id not in refused]
        outcomes, contacts = storable(outcomes, contacts)
        for o in outcomes:
            row = self.rows[o.event_id]
            e = row.event
            row.event = replace(
                e,
                state=o.state,
                reason=o.reason,
                stage=o.stage if o.stage is not None else e.stage,
                attempts=e.attempts + (1 if o.counts_attempt else 0),
                last_error_code=o.error_code,
                last_error_message=o.error_message,
                target_kind=o.target_kind or e.target_kind,
                target_id=o.target_id or e.target_id,
                updated_at=now,
            )
            row.next_attempt_at = o.next_attempt_at or 0.0
            row.coalesced_into = o.coalesced_into
            if o.counts_attempt:
                self.history_rows[o.event_id].append(
                    HistoryEntry(now, history_outcome(o.state), o.error_code, o.error_message)
                )
            if o.state == "synced":
                self.synced_at = now
        for c in contacts:
            old = self.contacts.get(c.object_id)
            newer = (
                old is None
                or old.last_occurred_at is None
                or c.last_occurred_at is None
                or c.last_occurred_at >= old.last_occurred_at
            )
            if newer:
                latest = max(
                    (
                        t
                        for t in (c.last_occurred_at, old.last_occurred_at if old else None)
                        if t is not None
                    ),
                    default=None,
                )
                self.contacts[c.object_id] = ContactState(
                    c.object_id, c.kind, c.target_id, c.stage, latest, c.record_digest
                )
        for object_id in release:
            if self.leases.get(object_id, ("", 0.0))[0] == owner:
                del self.leases[object_id]
        return refused

    async def next_due_at(self, now: float) -> float | None:
        """Earliest next attempt time among open events."""
        times = [r.next_attempt_at for r in self.rows.values() if r.event.state in OPEN_STATES]
        return min(times) if times else None

    # -- reading ---------------------------------------------------------------------

    async def counts(self) -> dict[str, dict[str, int]]:
        """Events per state and reason."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows.values():
            reasons = out.setdefault(r.event.state, {})
            reasons[r.event.reason or ""] = reasons.get(r.event.reason or "", 0) + 1
        return out

    async def oldest_open_received_at(
        self, due_at: float | None = None, *, in_flight: bool = True
    ) -> float | None:
        """``received_at`` of the oldest open event (due by ``due_at`` when given, and
        not leased then unless ``in_flight``)."""
        if due_at is None:
            rows = [r for r in self.rows.values() if r.event.state in OPEN_STATES]
        else:
            rows = self._due(due_at)
            if not in_flight:
                rows = [r for r in rows if not self._leased(r.event.object_id, due_at)]
        times = [r.event.received_at for r in rows]
        return min(times) if times else None

    async def last_synced_at(self) -> float | None:
        """When an event last ended ``synced``."""
        return self.synced_at

    async def get_event(self, event_id: int) -> StoredEvent | None:
        """One event, or None."""
        row = self.rows.get(event_id)
        return row.event if row else None

    def coalesced_into(self, event_id: int) -> int | None:
        """The event a ``coalesced`` event rode on (not part of the protocol)."""
        return self.rows[event_id].coalesced_into

    def next_attempt_at(self, event_id: int) -> float:
        """When an open event is due (not part of the protocol)."""
        return self.rows[event_id].next_attempt_at

    async def history(self, event_id: int) -> list[HistoryEntry]:
        """The attempts of one event, oldest first."""
        return list(self.history_rows.get(event_id, []))

    async def list_events(
        self, flt: EventFilter, limit: int, before_id: int | None = None
    ) -> list[StoredEvent]:
        """Matching events, newest first."""
        events = [
            r.event
            for r in sorted(self.rows.values(), key=lambda r: -r.event.id)
            if _matches(r.event, flt) and (before_id is None or r.event.id < before_id)
        ]
        return events[:limit]

    async def replay(self, event_ids: Sequence[int], now: float) -> list[ReplayRefusal]:
        """Send closed, valid events back to pending; refuse open, invalid or unknown ones."""
        states = {i: self.rows[i].event.state for i in event_ids if i in self.rows}
        refusals, ok = split_replayable(event_ids, states)
        for event_id in ok:
            self._replay_one(event_id, now)
        if ok:
            self._notify()
        return refusals

    def _replay_one(self, event_id: int, now: float) -> bool:
        row = self.rows[event_id]
        e = row.event
        if e.state not in REPLAYABLE_STATES:
            return False
        row.event = replace(
            e, state="pending", reason=None, attempt_floor=e.attempts, updated_at=now
        )
        row.next_attempt_at = 0.0
        return True

    async def replay_matching(
        self,
        flt: EventFilter,
        now: float,
        chunk: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Replay every closed, valid event matching ``flt``, ``chunk`` events at a time."""

        async def replay_chunk(below_id: int | None) -> tuple[int, int | None]:
            picked = [
                e.id
                for e in await self.list_events(flt, len(self.rows) + 1, below_id)
                if e.state in REPLAYABLE_STATES
            ][:chunk]
            if not picked:
                return 0, None
            return sum(self._replay_one(i, now) for i in picked), picked[-1]

        return await replay_in_chunks(replay_chunk, self._notify, progress)

    async def count_matching(self, flt: EventFilter) -> int:
        """How many events match."""
        return len(await self.list_events(flt, len(self.rows) + 1))

    async def purge(self, flt: EventFilter, chunk: int = 1000) -> int:
        """Delete matching events and their history, ``chunk`` events at a time."""

        async def purge_chunk() -> int | None:
            matching = await self.list_events(flt, len(self.rows) + 1)
            picked = sorted(e.id for e in matching)[:chunk]
            if not picked:
                return None
            for event_id in picked:
                del self.rows[event_id]
                self.history_rows.pop(event_id, None)
            return len(picked)

        return await purge_in_chunks(purge_chunk)

    async def get_contact(self, object_id: int) -> ContactState | None:
        """The sync state of one contact."""
        return self.contacts.get(object_id)

    # -- dry-run records -------------------------------------------------------------

    async def upsert_records(
        self, items: Sequence[tuple[str, str, dict[str, Any]]], now: float
    ) -> list[tuple[str, bool]]:
        """Merge fields into records."""
        out = []
        for kind, hubspot_id, fields in items:
            old = self.records_held.get((hubspot_id, kind))
            target_id = f"dry-{kind}-{hubspot_id}"
            merged = {**(old.fields if old else {}), **fields}
            self.records_held[(hubspot_id, kind)] = TargetRecord(
                hubspot_id, kind, target_id, merged, now
            )
            out.append((target_id, old is None))
        return out

    async def delete_records(self, hubspot_id: str) -> int:
        """Delete the records of a HubSpot id."""
        keys = [k for k in self.records_held if k[0] == hubspot_id]
        for key in keys:
            del self.records_held[key]
        return len(keys)

    async def list_records(self, kind: str | None = None) -> list[TargetRecord]:
        """Records, newest upsert first."""
        held = [r for r in self.records_held.values() if kind is None or r.kind == kind]
        return sorted(held, key=lambda r: -r.upserted_at)

    async def load_sync_settings(self) -> SavedSyncSettings | None:
        """The saved sync settings, or None."""
        return self.saved_sync

    async def sync_settings_version(self) -> int:
        """The sync settings' version."""
        return self.saved_sync.version if self.saved_sync else 0

    async def save_sync_settings(
        self,
        values: SyncValues | None,
        expected_version: int,
        at: float,
        by: str,
        changes: dict[str, Any],
    ) -> SavedSyncSettings | None:
        """Compare-and-set on the version."""
        if await self.sync_settings_version() != expected_version:
            return None
        self.saved_sync = SavedSyncSettings(expected_version + 1, values, at, by)
        self.sync_history.insert(0, SyncSettingsChange(expected_version + 1, at, by, changes))
        return self.saved_sync

    async def sync_settings_history(
        self, limit: int = 100, before: int | None = None
    ) -> list[SyncSettingsChange]:
        """Newest first; with ``before``, only older versions."""
        return [c for c in self.sync_history if before is None or c.version < before][:limit]

    async def failure_groups(self, samples: int = 5, limit: int = 50) -> list[FailureGroup]:
        """Failed events by code, largest first."""
        by_code: dict[str, list[StoredEvent]] = defaultdict(list)
        for row in self.rows.values():
            if row.event.state == "failed":
                by_code[row.event.last_error_code or ""].append(row.event)
        groups = []
        for code, events in by_code.items():
            events.sort(key=lambda e: e.id, reverse=True)
            groups.append(
                FailureGroup(
                    code,
                    events[0].last_error_message,
                    len(events),
                    min(e.updated_at for e in events),
                    max(e.updated_at for e in events),
                    tuple(e.id for e in events[:samples]),
                )
            )
        groups.sort(key=lambda g: (-g.count, g.code))
        return groups[:limit]

    # -- admin page sessions -----------------------------------------------------------

    async def start_admin_session(self, session_id: str, expires_at: float, now: float) -> None:
        """Remember a login; forget the expired ones."""
        self.admin_sessions = {k: v for k, v in self.admin_sessions.items() if v > now}
        self.admin_sessions[session_id] = expires_at

    async def admin_session_open(self, session_id: str, now: float) -> bool:
        """Whether a login is remembered and has not expired."""
        return self.admin_sessions.get(session_id, now) > now

    async def end_admin_session(self, session_id: str) -> None:
        """Forget a login."""
        self.admin_sessions.pop(session_id, None)
