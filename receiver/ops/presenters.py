"""The JSON shapes of events, records and times, shared by the admin API and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from receiver.models import HistoryEntry, StoredEvent, TargetRecord
from receiver.ops.nesting import MAX_EVENT_DEPTH, cut_to, deeper_than


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC with a ``Z``, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shown_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """An event's payload as answers show it: cut to :data:`MAX_EVENT_DEPTH` levels.

    Events stored before ingest refused deep nesting may nest far deeper, past what
    the JSON writer of an answer (which adds its own levels around it) can write.
    """
    if deeper_than(raw, MAX_EVENT_DEPTH):
        cut: dict[str, Any] = cut_to(raw, MAX_EVENT_DEPTH)
        return cut
    return raw


def event_json(event: StoredEvent) -> dict[str, Any]:
    """An event as the admin API and ``stagesync events --json`` show it."""
    last_error = None
    if event.last_error_code is not None or event.last_error_message is not None:
        last_error = {"code": event.last_error_code, "message": event.last_error_message}
    return {
        "id": event.id,
        "state": event.state,
        "reason": event.reason,
        "object_id": event.object_id,
        "subscription_type": event.subscription_type,
        "stage": event.stage,
        "attempts": event.attempts,
        # ``attempts`` counts across replays; MAX_ATTEMPTS applies to this figure.
        "attempts_since_replay": event.attempts - event.attempt_floor,
        "last_error": last_error,
        "received_at": iso(event.received_at),
        "updated_at": iso(event.updated_at),
        "target_kind": event.target_kind,
        "target_id": event.target_id,
        "raw": shown_raw(event.raw),
    }


def history_json(history: Sequence[HistoryEntry]) -> list[dict[str, Any]]:
    """An event's attempts."""
    out = []
    for h in history:
        err = None
        if h.error_code is not None or h.error_message is not None:
            err = {"code": h.error_code, "message": h.error_message}
        out.append({"at": iso(h.at), "outcome": h.outcome, "error": err})
    return out


def record_json(record: TargetRecord) -> dict[str, Any]:
    """A dry-run record as ``stagesync records --json`` prints it."""
    return {
        "hubspot_id": record.hubspot_id,
        "kind": record.kind,
        "target_id": record.target_id,
        "fields": record.fields,
        "upserted_at": iso(record.upserted_at),
    }
