"""How often the SQLite checkpointer runs: often while the WAL changes, rarely at rest."""

from __future__ import annotations

from receiver.store.sqlite_checkpoint import next_interval

ACTIVE, IDLE = 0.05, 0.25


def test_a_wal_that_grew_since_the_last_pass_is_checkpointed_again_soon() -> None:
    assert next_interval((1000, 1000), (2500, 2500), ACTIVE, IDLE) == ACTIVE


def test_a_wal_started_again_from_its_beginning_counts_as_changed() -> None:
    assert next_interval((9000, 9000), (300, 300), ACTIVE, IDLE) == ACTIVE


def test_the_first_pass_over_a_written_wal_is_followed_soon() -> None:
    assert next_interval(None, (40, 40), ACTIVE, IDLE) == ACTIVE


def test_nothing_new_since_the_last_pass_backs_off() -> None:
    assert next_interval((2500, 2500), (2500, 2500), ACTIVE, IDLE) == IDLE


def test_an_empty_wal_backs_off() -> None:
    assert next_interval(None, (0, 0), ACTIVE, IDLE) == IDLE


def test_a_pass_sqlite_could_not_run_backs_off() -> None:
    assert next_interval((2500, 2500), (-1, -1), ACTIVE, IDLE) == IDLE


def test_a_failed_pass_backs_off() -> None:
    assert next_interval((2500, 2500), None, ACTIVE, IDLE) == IDLE
