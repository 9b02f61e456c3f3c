"""Row conversion and filter SQL shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import orjson

from receiver.models import (
    ClaimedContact,
    ContactState,
    ContactUpdate,
    EventFilter,
    Outcome,
    SavedSyncSettings,
    StoredEvent,
    SyncSettingsChange,
    SyncValues,
)

EVENT_COLUMNS = (
    "id, state, reason, object_id, subscription_type, occurred_at, stage, attempts, "
    "last_error_code, last_error_message, received_at, updated_at, target_kind, target_id, "
    "raw, attempt_floor"
)


UNREADABLE_RAW = {"stagesync": "the stored payload cannot be read back as JSON"}


def raw_document(raw: bytes | None) -> dict[str, Any]:
    """A stored payload as a document; a placeholder for one JSON cannot read back (an
    older version stored events nested past the 1,024 levels orjson reads)."""
    if raw is None:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return dict(UNREADABLE_RAW)
    return doc if type(doc) is dict else {"stagesync": "the stored payload is not an object"}


def event_from_row(row: Sequence[Any]) -> StoredEvent:
    """Build a :class:`StoredEvent` from a row selected with ``EVENT_COLUMNS``."""
    # Positional, in the dataclass's field order: a claim builds hundreds of these.
    return StoredEvent(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
        float(row[10]), float(row[11]), row[12], row[13],
        raw_document(row[14]), row[15],
    )  # fmt: skip


def claimed_contacts(
    ids: Sequence[int], rows: Iterable[Sequence[Any]], states: Mapping[int, ContactState]
) -> list[ClaimedContact]:
    """A claim's contacts, in ``ids`` order, each with its event rows (``EVENT_COLUMNS``,
    already in order) and its sync state, if it has one."""
    by_contact: dict[int, list[StoredEvent]] = {i: [] for i in ids}
    for row in rows:
        event = event_from_row(row)
        by_contact[event.object_id].append(event)  # type: ignore[index]
    return [ClaimedContact(i, tuple(by_contact[i]), states.get(i)) for i in ids]


def history_outcome(state: str) -> str:
    """The outcome an attempt that left its event in ``state`` has in its history."""
    return "retry" if state == "retrying" else state


def history_rows(outcomes: Iterable[Outcome]) -> list[tuple[int, str, str | None, str | None]]:
    """``(event id, outcome, error code, error message)`` for each outcome that is an attempt."""
    return [
        (o.event_id, history_outcome(o.state), o.error_code, o.error_message)
        for o in outcomes
        if o.counts_attempt
    ]


def _has_nul(*texts: str | None) -> bool:
    return any(t is not None and "\x00" in t for t in texts)


def _clean(text: str | None) -> str | None:
    return text.replace("\x00", "\ufffd") if text is not None else None


def storable(
    outcomes: Sequence[Outcome], contacts: Sequence[ContactUpdate]
) -> tuple[Sequence[Outcome], Sequence[ContactUpdate]]:
    """``outcomes`` and ``contacts`` with each NUL character of their texts made U+FFFD.

    Both stores record them so: PostgreSQL's ``text`` cannot hold a NUL, SQLite's JSON
    functions end a text at one, and an error message quoted from a target might carry
    one; recording must not fail over it.
    """
    if any(
        _has_nul(o.reason, o.stage, o.error_code, o.error_message, o.target_kind, o.target_id)
        for o in outcomes
    ):
        outcomes = [
            replace(o, reason=_clean(o.reason), stage=_clean(o.stage),
                    error_code=_clean(o.error_code), error_message=_clean(o.error_message),
                    target_kind=_clean(o.target_kind), target_id=_clean(o.target_id))
            for o in outcomes
        ]  # fmt: skip
    if any(_has_nul(c.kind, c.target_id, c.stage) for c in contacts):
        contacts = [
            replace(c, kind=_clean(c.kind), target_id=_clean(c.target_id), stage=_clean(c.stage))
            for c in contacts
        ]
    return outcomes, contacts


def filter_sql(
    flt: EventFilter, param: Callable[[Any], str], contact_match: str = "object_id = {0}"
) -> str:
    """SQL conditions (joined with AND, ``TRUE`` when empty) for an :class:`EventFilter`.

    ``param(value)`` registers a value and returns its placeholder, so one function
    serves both ``?`` (SQLite) and ``$n`` (PostgreSQL) styles. ``contact_match`` is the
    condition for one contact, with a placeholder ``{0}``, ``{1}``... for each time it
    names the contact id.
    """
    parts = []
    if flt.state is not None:
        parts.append(f"state = {param(flt.state)}")
    if flt.states:
        parts.append("state IN (" + ", ".join(param(s) for s in flt.states) + ")")
    if flt.object_id is not None:
        uses = contact_match.count("{")
        parts.append(contact_match.format(*(param(flt.object_id) for _ in range(uses))))
    if flt.since is not None:
        parts.append(f"received_at >= {param(flt.since)}")
    if flt.until is not None:
        parts.append(f"received_at < {param(flt.until)}")
    if flt.error_code is not None:
        parts.append(f"coalesce(last_error_code, '') = {param(flt.error_code)}")
    return " AND ".join(parts) if parts else "1 = 1"


class QmarkParams:
    """Collects values for ``?`` placeholders."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return "?"


class DollarParams:
    """Collects values for PostgreSQL's ``$n`` placeholders."""

    def __init__(self, start: int = 0) -> None:
        self.values: list[Any] = []
        self.start = start

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${self.start + len(self.values)}"


def sync_values_json(values: SyncValues | None) -> bytes | None:
    """Saved sync settings as the stores keep them (None: the configured values)."""
    if values is None:
        return None
    return orjson.dumps(
        {
            "lead_sync": values.lead_sync,
            "contact_sync": values.contact_sync,
            "lead_stages": list(values.lead_stages),
            "contact_stages": list(values.contact_stages),
        }
    )


def saved_sync_settings(
    version: int, saved: str | bytes | None, updated_at: float | None, updated_by: str | None
) -> SavedSyncSettings | None:
    """The sync settings row; None while nothing was ever saved (version 0)."""
    if version == 0:
        return None
    values = None
    if saved is not None:
        doc = orjson.loads(saved)
        values = SyncValues(
            bool(doc["lead_sync"]),
            bool(doc["contact_sync"]),
            tuple(doc["lead_stages"]),
            tuple(doc["contact_stages"]),
        )
    return SavedSyncSettings(
        version, values, float(updated_at) if updated_at is not None else None, updated_by
    )


def sync_settings_change(
    version: int, at: float, by: str, changes: str | bytes
) -> SyncSettingsChange:
    """One history row."""
    return SyncSettingsChange(int(version), float(at), by, orjson.loads(changes))
