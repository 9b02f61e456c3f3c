"""SQL that the SQLite and PostgreSQL stores share: predicates, column lists, statements.

Each rule is written here once, from the states in :mod:`receiver.models`. Fragments
that carry a value take the placeholder as an argument (``?`` for SQLite, ``$n`` for
PostgreSQL; see :class:`~receiver.store.rows.QmarkParams` and
:class:`~receiver.store.rows.DollarParams`).

What stays in each backend differs on purpose: SQLite names its indexes (it has no
statistics to pick them), keeps new events out of the index by contact until a claim
lists them, and writes many rows through ``json_each(?)`` on a writer thread; PostgreSQL
passes arrays through ``unnest``, locks lease rows with ``FOR UPDATE SKIP LOCKED`` for
several instances, and counts through triggers into a delta table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from receiver.models import OPEN_STATES, REPLAYABLE_STATES, STATES, EventFilter
from receiver.store.rows import EVENT_COLUMNS, filter_sql


def _quoted(states: Sequence[str]) -> str:
    return ", ".join(f"'{s}'" for s in states)


# Due, or waiting on a retry: the condition of the partial indexes of open events.
OPEN_SQL = f"state IN ({_quoted(OPEN_STATES)})"
# Written as the complement (open or invalid), as the stores always have: the query plans
# of replays stay as they were.
REPLAYABLE_SQL = f"state NOT IN ({_quoted([s for s in STATES if s not in REPLAYABLE_STATES])})"

# How many open events a claim looks at, per contact it may take, to find distinct
# contacts. Reading further costs every claim of a backlog milliseconds of the write
# lock (SQLite) or of the snapshot (PostgreSQL); contacts with many events each just
# take more claims.
CLAIM_SCAN_PER_CONTACT = 5

CONTACT_COLUMNS = "object_id, kind, target_id, stage, last_occurred_at, record_digest"
HISTORY_COLUMNS = "at, outcome, error_code, error_message"

NEXT_DUE = f"SELECT min(next_attempt_at) FROM events WHERE {OPEN_SQL}"
LAST_SYNCED = "SELECT value FROM meta WHERE key = 'last_synced_at'"


def unleased_sql(now: str) -> str:
    """The condition that no instance holds a lease on the event's contact at ``now``, a
    placeholder."""
    return f"object_id NOT IN (SELECT object_id FROM contact_leases WHERE until > {now})"


def oldest_open_sql(due: str | None, index: str = "", *, in_flight: bool = True) -> str:
    """``received_at`` of the oldest open event; with the placeholder ``due``, only of those
    due by then, and without ``in_flight`` only of those whose contact is not leased then.
    ``index`` names the index to read (SQLite: ``INDEXED BY ...``)."""
    where = OPEN_SQL
    if due is not None:
        where += f" AND next_attempt_at <= {due}"
        if not in_flight:
            where += f" AND {unleased_sql(due)}"
    return f"SELECT received_at FROM events{index} WHERE {where} ORDER BY id LIMIT 1"


def replay_set(now: str) -> str:
    """The ``SET`` list of a replay, with ``now`` the placeholder of the time.

    ``attempt_floor`` keeps the attempts made before the replay out of the new budget.
    """
    return (
        "state = 'pending', reason = NULL, next_attempt_at = 0, attempt_floor = attempts,"
        f" updated_at = {now}"
    )


def event_sql(param: str) -> str:
    """One event by id, ``param`` its placeholder."""
    return f"SELECT {EVENT_COLUMNS} FROM events WHERE id = {param}"


def contact_sql(param: str) -> str:
    """One contact's sync state, ``param`` its placeholder."""
    return f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE object_id = {param}"


def newest_sql(
    flt: EventFilter,
    param: Callable[[Any], str],
    limit: int,
    below_id: int | None,
    contact_match: str = "object_id = {0}",
    columns: str = EVENT_COLUMNS,
    also: str | None = None,
) -> str:
    """``columns`` of up to ``limit`` events matching ``flt`` (and the condition ``also``)
    with an id below ``below_id``, newest first: a page of the listing, or the next chunk
    of a replay (see ``filter_sql`` for ``param`` and ``contact_match``)."""
    where = filter_sql(flt, param, contact_match)
    if also is not None:
        where += f" AND {also}"
    if below_id is not None:
        where += f" AND id < {param(below_id)}"
    return f"SELECT {columns} FROM events WHERE {where} ORDER BY id DESC LIMIT {param(limit)}"


def count_matching_sql(
    flt: EventFilter, param: Callable[[Any], str], contact_match: str = "object_id = {0}"
) -> str:
    """How many events match ``flt``."""
    return f"SELECT count(*) FROM events WHERE {filter_sql(flt, param, contact_match)}"


def purge_pick_sql(
    flt: EventFilter,
    param: Callable[[Any], str],
    chunk: int,
    contact_match: str = "object_id = {0}",
) -> str:
    """The ids of the next ``chunk`` events matching ``flt``, oldest first."""
    where = filter_sql(flt, param, contact_match)
    return f"SELECT id FROM events WHERE {where} ORDER BY id LIMIT {param(chunk)}"
