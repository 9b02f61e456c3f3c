"""Frozen dataclasses passed between the store, the dispatcher and the targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["lead", "contact"]

STATES = ("pending", "retrying", "synced", "skipped", "failed", "invalid")
# Queued for the dispatcher: claimed when due.
OPEN_STATES = ("pending", "retrying")
# What a replay may send back to pending: closed events. An open one is queued already,
# and an invalid one has nothing a dispatch could process.
REPLAYABLE_STATES = ("synced", "skipped", "failed")


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event of a webhook batch, ready to be stored."""

    dedup_key: bytes
    raw: bytes  # the event's own JSON, as received
    object_id: int | None
    subscription_type: str | None
    occurred_at: int | None  # ms since epoch
    stage: str | None  # lifecyclestage carried by the event, if any
    invalid_error: str | None = None  # set: stored as ``invalid`` with this message


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the store holds it."""

    id: int
    state: str
    reason: str | None
    object_id: int | None
    subscription_type: str | None
    occurred_at: int | None
    stage: str | None
    attempts: int
    last_error_code: str | None
    last_error_message: str | None
    received_at: float  # unix seconds
    updated_at: float
    target_kind: str | None
    target_id: str | None
    raw: dict[str, Any]
    attempt_floor: int = 0  # attempts made before the last replay


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One attempt of an event: when, which outcome, and the error if any."""

    at: float
    outcome: str  # synced | skipped | retry | failed
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class ContactState:
    """What was last applied to the target for one HubSpot contact."""

    object_id: int
    kind: str | None  # "lead" | "contact" | None (nothing written yet)
    target_id: str | None
    stage: str | None
    last_occurred_at: int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one dispatch of one event, to be recorded by the store.

    ``state`` is synced/skipped/failed/retrying. ``counts_attempt`` is False for
    rate-limit delays, which leave attempts and history untouched.
    """

    event_id: int
    state: str
    reason: str | None = None
    stage: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    next_attempt_at: float | None = None
    target_kind: str | None = None
    target_id: str | None = None
    counts_attempt: bool = True
    coalesced_into: int | None = None


@dataclass(frozen=True, slots=True)
class ContactUpdate:
    """New sync state for one contact, recorded together with its outcomes."""

    object_id: int
    kind: str | None
    target_id: str | None
    stage: str | None
    last_occurred_at: int | None


@dataclass(frozen=True, slots=True)
class ClaimedContact:
    """A contact leased for dispatch, with its due events (oldest first) and sync state."""

    object_id: int
    events: tuple[StoredEvent, ...]
    state: ContactState | None


@dataclass(frozen=True, slots=True)
class TargetRecord:
    """One record the dry-run target holds."""

    hubspot_id: str
    kind: str
    target_id: str
    fields: dict[str, Any]
    upserted_at: float


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Filters shared by listing, replay and purge."""

    state: str | None = None
    object_id: int | None = None
    since: float | None = None  # received_at >= since (unix seconds)
    until: float | None = None  # received_at < until
    states: tuple[str, ...] = field(default_factory=tuple)
