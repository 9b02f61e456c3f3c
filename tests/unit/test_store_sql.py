"""The states and SQL both stores share (``receiver.store.sql``, ``receiver.store.replay``)."""

from __future__ import annotations

import sqlite3

from receiver.models import OPEN_STATES, REPLAYABLE_STATES, STATES, EventFilter
from receiver.store.base import split_replayable
from receiver.store.replay import purge_in_chunks, replay_in_chunks
from receiver.store.rows import QmarkParams
from receiver.store.sql import OPEN_SQL, REPLAYABLE_SQL, newest_sql


def test_replay_accepts_exactly_the_replayable_states() -> None:
    ids = list(range(len(STATES)))
    _, ok = split_replayable(ids, dict(zip(ids, STATES, strict=True)))
    assert [STATES[i] for i in ok] == list(REPLAYABLE_STATES)
    assert not set(REPLAYABLE_STATES) & set(OPEN_STATES)


def test_the_sql_conditions_select_the_states_they_are_named_for() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, state TEXT)")
    conn.executemany("INSERT INTO events (state) VALUES (?)", [(s,) for s in STATES])
    opened = [r[0] for r in conn.execute(f"SELECT state FROM events WHERE {OPEN_SQL}")]
    closed = [r[0] for r in conn.execute(f"SELECT state FROM events WHERE {REPLAYABLE_SQL}")]
    conn.close()
    assert opened == list(OPEN_STATES)
    assert closed == list(REPLAYABLE_STATES)


def test_newest_sql_pages_below_an_id_with_the_filters_values_first() -> None:
    params = QmarkParams()
    sql = newest_sql(EventFilter(state="failed"), params, 10, 500, columns="id")
    assert sql.endswith("ORDER BY id DESC LIMIT ?")
    assert params.values == ["failed", 500, 10]


async def test_replay_in_chunks_goes_below_each_chunk_and_reports_the_running_total() -> None:
    pending = list(range(10, 0, -1))
    asked: list[int | None] = []
    wakes: list[int] = []
    seen: list[int] = []

    async def chunk(below_id: int | None) -> tuple[int, int | None]:
        asked.append(below_id)
        part = [i for i in pending if below_id is None or i < below_id][:4]
        return (len(part), part[-1]) if part else (0, None)

    assert await replay_in_chunks(chunk, lambda: wakes.append(1), seen.append) == 10
    assert asked == [None, 7, 3, 1]
    assert seen == [4, 8, 10] and len(wakes) == 3


async def test_purge_in_chunks_adds_up_until_nothing_is_left() -> None:
    left = [3, 3, 1]

    async def chunk() -> int | None:
        return left.pop(0) if left else None

    assert await purge_in_chunks(chunk) == 7
