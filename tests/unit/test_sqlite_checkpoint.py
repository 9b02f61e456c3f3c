"""How often the SQLite checkpointer runs: often while others commit, rarely at rest."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from receiver.store.sqlite.checkpoint import Progress, checkpoint, next_interval

ACTIVE, IDLE = 0.05, 0.25


def test_a_commit_since_the_last_pass_brings_the_next_one_soon() -> None:
    assert next_interval(Progress(1000, 1000, 7), Progress(2500, 2500, 9), ACTIVE, IDLE) == ACTIVE


def test_a_wal_started_again_at_the_same_length_still_counts_as_written() -> None:
    before, after = Progress(12, 12, 3), Progress(12, 12, 4)
    assert next_interval(before, after, ACTIVE, IDLE) == ACTIVE


def test_a_pass_sqlite_could_not_run_during_commits_is_retried_soon() -> None:
    assert next_interval(Progress(9000, 8000, 3), Progress(-1, -1, 5), ACTIVE, IDLE) == ACTIVE


def test_no_commit_since_the_last_pass_backs_off() -> None:
    same = Progress(2500, 2500, 7)
    assert next_interval(same, same, ACTIVE, IDLE) == IDLE


def test_the_first_pass_is_followed_soon_only_when_it_found_pages() -> None:
    assert next_interval(None, Progress(40, 40, 1), ACTIVE, IDLE) == ACTIVE
    assert next_interval(None, Progress(0, 0, 1), ACTIVE, IDLE) == IDLE


def test_a_failed_pass_backs_off() -> None:
    assert next_interval(Progress(2500, 2500, 7), None, ACTIVE, IDLE) == IDLE


def test_a_pass_sees_commits_by_other_connections_and_not_its_own(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    writer = sqlite3.connect(path, isolation_level=None)
    checkpointer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("CREATE TABLE t (x)")
        first = checkpoint(checkpointer)
        assert first.pages > 0 and first.copied == first.pages
        assert checkpoint(checkpointer).version == first.version  # its own pass: no change
        writer.execute("INSERT INTO t VALUES (1)")
        after = checkpoint(checkpointer)
        assert after.version != first.version
        assert next_interval(first, after, ACTIVE, IDLE) == ACTIVE
    finally:
        writer.close()
        checkpointer.close()
