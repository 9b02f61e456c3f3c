"""The event store's behaviour, run against SQLite, PostgreSQL and the in-memory store of
the unit tests (see ``conftest.py``).

A few PostgreSQL-only behaviours (the listener's reconnect, schema versions, folding the
counts) are at the end; several instances on one database are in ``test_two_instances``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from receiver.errors import ConfigError, StoreError
from receiver.hubspot.payload import to_new_events
from receiver.models import (
    ClaimedContact,
    ContactState,
    ContactUpdate,
    EventFilter,
    NewEvent,
    Outcome,
)
from receiver.store.base import EventStore, IngestResult
from receiver.store.postgres.store import PostgresStore
from tests.integration.conftest import Backend, with_query
from tests.support.webhooks import event

NOW = 1_700_000_000.0


def batch(*items: dict[str, Any]) -> list[NewEvent]:
    return to_new_events(list(items))


async def claim_map(store: EventStore, owner: str, now: float, lease_s: float = 30.0,
                    max_contacts: int = 100) -> dict[int, ClaimedContact]:  # fmt: skip
    return {c.object_id: c for c in await store.claim(owner, now, lease_s, max_contacts)}


async def ids_of(store: EventStore, **flt: Any) -> list[int]:
    return [e.id for e in await store.list_events(EventFilter(**flt), 1000)]


async def close_all(*events: Outcome, store: EventStore, owner: str, now: float) -> None:
    await store.record(owner, list(events), [], [], now)


# -- ingest --------------------------------------------------------------------------


async def test_a_batch_partly_stored_already_counts_only_its_new_events_by_state(
    store: EventStore,
) -> None:
    first, second, third = event(1, "lead"), event(2, "lead"), event(3, "customer")
    await store.ingest(batch(first, second), NOW)
    result = await store.ingest(batch(second, third, {"objectId": "x"}), NOW + 1)
    assert result == IngestResult(accepted=1, duplicates=1, invalid=1)
    assert await store.counts() == {"pending": {"": 3}, "invalid": {"": 1}}
    assert await store.count_matching(EventFilter(state="pending")) == 3


async def test_ingest_counts_accepted_in_batch_duplicates_and_invalid(store: EventStore) -> None:
    a, b = event(1, "lead"), event(2, "customer")
    retried = {**a, "attemptNumber": 3}
    result = await store.ingest(batch(a, b, retried, {"objectId": "not-a-number"}), NOW)
    assert result == IngestResult(accepted=2, duplicates=1, invalid=1)
    assert await store.counts() == {"pending": {"": 2}, "invalid": {"": 1}}


async def test_ingest_counts_a_redelivered_event_as_duplicate_and_stores_it_once(
    store: EventStore,
) -> None:
    a, b, c = event(1, "lead"), event(2, "lead"), event(3, "lead")
    assert await store.ingest(batch(a, b), NOW) == IngestResult(2, 0, 0)
    again = await store.ingest(batch({**a, "attemptNumber": 1}, b, c), NOW + 1)
    assert again == IngestResult(accepted=1, duplicates=2, invalid=0)
    assert await store.count_matching(EventFilter()) == 3


async def test_ingest_keeps_the_raw_event_and_the_validation_error_of_an_invalid_one(
    store: EventStore,
) -> None:
    good = event(7, "lead")
    bad = {"objectId": "seven", "subscriptionType": "contact.creation"}
    await store.ingest(batch(good, bad), NOW)
    [invalid] = await store.list_events(EventFilter(state="invalid"), 10)
    assert invalid.raw == bad
    assert invalid.last_error_code == "invalid_event"
    assert "objectId" in (invalid.last_error_message or "")
    [pending] = await store.list_events(EventFilter(state="pending"), 10)
    assert pending.raw == good
    assert (pending.object_id, pending.stage, pending.received_at) == (7, "lead", NOW)
    assert pending.occurred_at == good["occurredAt"]


async def test_concurrent_ingests_are_each_answered_with_their_own_counts(
    store: EventStore,
) -> None:
    pool = [event(1000 + i, "lead") for i in range(44)]
    requests = [batch(*pool[i : i + 5]) for i in range(40)]
    results = await asyncio.gather(*(store.ingest(r, NOW) for r in requests))
    assert all(r.accepted + r.duplicates == 5 and r.invalid == 0 for r in results)
    assert sum(r.accepted for r in results) == 44
    assert await store.count_matching(EventFilter(state="pending")) == 44


async def test_events_and_deduplication_survive_close_and_reopen(backend: Backend) -> None:
    backend.skip_if_memory("it keeps nothing across a close, there is no database to reopen")
    a, b = event(1, "lead"), event(2, "opportunity")
    first = backend.new()
    await first.open()
    await first.ingest(batch(a, b), NOW)
    await first.close()
    second = backend.new()
    await second.open()
    try:
        assert sorted(e.object_id or 0 for e in await second.list_events(EventFilter(), 10)) == [
            1,
            2,
        ]
        assert await second.ingest(batch(a, b), NOW + 1) == IngestResult(0, 2, 0)
        assert await second.counts() == {"pending": {"": 2}}
    finally:
        await second.close()


# -- claims and leases ---------------------------------------------------------------


async def test_claim_returns_contacts_oldest_first_with_their_events_by_occurrence(
    store: EventStore,
) -> None:
    await store.ingest(batch(event(5, "lead", occurred_at=300), event(3, "lead")), NOW)
    await store.ingest(batch(event(5, "customer", occurred_at=100), event(9, "lead")), NOW)
    claimed = await store.claim("a", NOW, 30, 2)
    assert [c.object_id for c in claimed] == [5, 3]
    assert [e.occurred_at for e in claimed[0].events] == [100, 300]
    assert [e.stage for e in claimed[0].events] == ["customer", "lead"]
    assert claimed[0].state is None


async def test_a_leased_contact_is_not_claimed_again_until_its_lease_is_released(
    store: EventStore,
) -> None:
    await store.ingest(batch(event(1, "lead"), event(2, "lead")), NOW)
    first = await claim_map(store, "a", NOW)
    assert set(first) == {1, 2}
    assert await store.claim("b", NOW + 1, 30, 10) == []
    assert await store.claim("a", NOW + 1, 30, 10) == []  # not even by its own owner
    await store.ingest(batch(event(1, "customer")), NOW + 2)
    assert await store.claim("b", NOW + 2, 30, 10) == []
    done = [Outcome(e.id, "synced", target_kind="lead", target_id="L1") for e in first[1].events]
    await store.record("a", done, [ContactUpdate(1, "lead", "L1", "lead", 1)], [1], NOW + 3)
    again = await claim_map(store, "b", NOW + 3)
    assert set(again) == {1}
    assert [e.stage for e in again[1].events] == ["customer"]
    assert again[1].state == ContactState(1, "lead", "L1", "lead", 1)


async def test_an_expired_lease_is_claimed_by_another_owner(store: EventStore) -> None:
    await store.ingest(batch(event(1, "lead")), NOW)
    [held] = await store.claim("dead", NOW, 5, 10)
    assert await store.claim("b", NOW + 4.9, 5, 10) == []
    [taken] = await store.claim("b", NOW + 5.1, 5, 10)
    assert taken.object_id == 1 and [e.id for e in taken.events] == [e.id for e in held.events]
    # The dead owner's late release does not free the new owner's lease.
    await store.record("dead", [], [], [1], NOW + 6)
    assert await store.claim("c", NOW + 6, 5, 10) == []


async def test_a_renewed_lease_holds_past_its_first_end_and_its_round_is_recorded(
    store: EventStore,
) -> None:
    await store.ingest(batch(event(1, "lead"), event(2, "lead")), NOW)
    claimed = await claim_map(store, "a", NOW, lease_s=5)
    assert await store.renew_leases("a", [1, 2], NOW + 4, NOW + 20) == [1, 2]
    assert await store.claim("b", NOW + 10, 5, 10) == []  # past the first end, still held
    done = [Outcome(e.id, "synced", target_kind="lead", target_id="L1") for e in claimed[1].events]
    refused = await store.record("a", done, [], [1], NOW + 15)
    assert refused == []
    assert (await store.get_event(claimed[1].events[0].id)).state == "synced"  # type: ignore[union-attr]


async def test_a_lease_that_ran_out_or_is_anothers_is_not_renewed(store: EventStore) -> None:
    await store.ingest(batch(event(1, "lead"), event(2, "lead")), NOW)
    await store.claim("a", NOW, 5, 1)  # contact 1, until NOW + 5
    await store.claim("b", NOW, 30, 1)  # contact 2
    assert await store.renew_leases("a", [1, 2], NOW + 6, NOW + 60) == []
    [taken] = await store.claim("c", NOW + 6, 30, 10)
    assert taken.object_id == 1  # the lapsed lease was free to take


async def test_a_retrying_event_is_claimed_only_once_due(store: EventStore) -> None:
    await store.ingest(batch(event(1, "lead")), NOW)
    [claimed] = await store.claim("a", NOW, 30, 10)
    retry = Outcome(claimed.events[0].id, "retrying", error_code="http_503",
                    error_message="unavailable", next_attempt_at=NOW + 60)  # fmt: skip
    await store.record("a", [retry], [], [1], NOW + 1)
    assert await store.claim("a", NOW + 2, 30, 10) == []
    assert await store.next_due_at(NOW + 2) == NOW + 60
    [due] = await store.claim("a", NOW + 61, 30, 10)
    assert due.events[0].attempts == 1 and due.events[0].state == "retrying"


# -- record --------------------------------------------------------------------------


async def test_record_keeps_outcome_history_contact_state_and_last_sync(
    store: EventStore,
) -> None:
    await store.ingest(
        batch(event(1, "lead", occurred_at=10), event(1, "customer", occurred_at=20)), NOW
    )
    [c] = await store.claim("a", NOW, 30, 10)
    older, newer = c.events
    assert await store.last_synced_at() is None
    await store.record(
        "a",
        [Outcome(newer.id, "retrying", error_code="timeout", error_message="slow",
                 next_attempt_at=NOW + 1)],
        [], [1], NOW + 0.5,
    )  # fmt: skip
    [c] = await store.claim("a", NOW + 2, 30, 10)
    await store.record(
        "a",
        [
            Outcome(older.id, "skipped", reason="coalesced", coalesced_into=newer.id),
            Outcome(newer.id, "synced", stage="customer", target_kind="contact", target_id="C1"),
        ],
        [ContactUpdate(1, "contact", "C1", "customer", 20)],
        [1],
        NOW + 3,
    )
    synced = await store.get_event(newer.id)
    assert synced is not None
    assert (synced.state, synced.stage, synced.target_kind, synced.target_id) == (
        "synced", "customer", "contact", "C1")  # fmt: skip
    assert (synced.attempts, synced.last_error_code, synced.updated_at) == (2, None, NOW + 3)
    assert [(h.at, h.outcome, h.error_code) for h in await store.history(newer.id)] == [
        (NOW + 0.5, "retry", "timeout"),
        (NOW + 3, "synced", None),
    ]
    skipped = await store.get_event(older.id)
    assert skipped is not None and (skipped.state, skipped.reason) == ("skipped", "coalesced")
    assert await store.get_contact(1) == ContactState(1, "contact", "C1", "customer", 20)
    assert await store.get_contact(2) is None
    assert await store.last_synced_at() == NOW + 3


async def test_a_rate_limit_delay_uses_no_attempt_and_leaves_no_history(
    store: EventStore,
) -> None:
    await store.ingest(batch(event(1, "lead")), NOW)
    [c] = await store.claim("a", NOW, 30, 10)
    delay = Outcome(c.events[0].id, "retrying", error_code="RATE_LIMIT", error_message="slow down",
                    next_attempt_at=NOW + 10, counts_attempt=False)  # fmt: skip
    await store.record("a", [delay], [], [1], NOW)
    stored = await store.get_event(c.events[0].id)
    assert stored is not None
    assert (stored.state, stored.attempts, stored.last_error_code) == ("retrying", 0, "RATE_LIMIT")
    assert await store.history(stored.id) == []


async def test_counts_follow_every_state_and_reason_change(store: EventStore) -> None:
    await store.ingest(batch(*(event(i, "lead") for i in range(1, 5)), {"bad": True}), NOW)
    claimed = await claim_map(store, "a", NOW)
    ev = {i: claimed[i].events[0].id for i in claimed}
    await store.record(
        "a",
        [
            Outcome(ev[1], "synced", target_kind="lead", target_id="L1"),
            Outcome(ev[2], "skipped", reason="stale"),
            Outcome(ev[3], "failed", error_code="INVALID_FIELD", error_message="bad"),
            Outcome(ev[4], "retrying", error_code="timeout", next_attempt_at=NOW + 5),
        ],
        [], list(claimed), NOW + 1,
    )  # fmt: skip
    assert await store.counts() == {
        "synced": {"": 1}, "skipped": {"stale": 1}, "failed": {"": 1}, "retrying": {"": 1},
        "invalid": {"": 1},
    }  # fmt: skip
    await store.replay([ev[3]], NOW + 2)
    await store.purge(EventFilter(state="skipped"))
    assert await store.counts() == {
        "synced": {"": 1}, "pending": {"": 1}, "retrying": {"": 1}, "invalid": {"": 1},
    }  # fmt: skip


async def test_oldest_open_is_the_oldest_pending_or_retrying_event(store: EventStore) -> None:
    assert await store.oldest_open_received_at() is None
    await store.ingest(batch(event(1, "lead")), NOW)
    await store.ingest(batch(event(2, "lead")), NOW + 10)
    assert await store.oldest_open_received_at() == NOW
    claimed = await claim_map(store, "a", NOW + 11)
    first, second = claimed[1].events[0].id, claimed[2].events[0].id
    later = Outcome(second, "retrying", next_attempt_at=NOW + 99)
    await store.record("a", [Outcome(first, "synced"), later], [], [1, 2], NOW + 12)
    assert await store.oldest_open_received_at() == NOW + 10
    # An event waiting out its backoff is not due work: readiness does not count it.
    assert await store.oldest_open_received_at(due_at=NOW + 50) is None
    assert await store.oldest_open_received_at(due_at=NOW + 99) == NOW + 10
    await store.record("a", [Outcome(claimed[2].events[0].id, "failed")], [], [], NOW + 13)
    assert await store.oldest_open_received_at() is None


async def test_an_event_in_flight_is_not_due_work_until_its_lease_ends(store: EventStore) -> None:
    await store.ingest(batch(event(1, "lead")), NOW)
    await store.ingest(batch(event(2, "lead")), NOW + 10)
    await claim_map(store, "a", NOW + 11, lease_s=30, max_contacts=1)  # contact 1, in flight

    async def oldest_due(at: float) -> float | None:
        return await store.oldest_open_received_at(due_at=at, in_flight=False)

    assert await oldest_due(NOW + 20) == NOW + 10
    # Readiness and /status still count it: a call that hangs holds the queue up.
    assert await store.oldest_open_received_at(due_at=NOW + 20) == NOW
    assert await store.oldest_open_received_at() == NOW
    # An event that arrives for the leased contact waits on the lease, as a claim does.
    await store.ingest(batch(event(1, "customer")), NOW + 12)
    assert await oldest_due(NOW + 20) == NOW + 10
    await claim_map(store, "a", NOW + 21, lease_s=30, max_contacts=1)  # contact 2 as well
    assert await oldest_due(NOW + 22) is None
    # The owner died holding the lease: once it ends, the events are due work again.
    assert await oldest_due(NOW + 42) == NOW


# -- replay and purge ----------------------------------------------------------------


async def test_replay_refuses_open_invalid_and_unknown_events(store: EventStore) -> None:
    await store.ingest(batch(event(1, "lead"), {"bad": 1}), NOW)
    [pending] = await ids_of(store, state="pending")
    [invalid] = await ids_of(store, state="invalid")
    refusals = await store.replay([pending, invalid, 999_999], NOW)
    assert [(r.event_id, r.reason) for r in refusals] == [
        (pending, "the event is pending: already queued"),
        (invalid, "an invalid event cannot be processed"),
        (999_999, "no such event"),
    ]
    assert await store.counts() == {"pending": {"": 1}, "invalid": {"": 1}}


async def test_replay_sends_a_closed_event_back_to_pending_and_wakes_listeners(
    store: EventStore,
) -> None:
    wakes: list[int] = []
    store.add_commit_listener(lambda: wakes.append(1))
    await store.ingest(batch(event(1, "lead")), NOW)
    assert wakes
    [c] = await store.claim("a", NOW, 30, 10)
    event_id = c.events[0].id
    await store.record("a", [Outcome(event_id, "failed", error_code="X", error_message="no")],
                       [], [1], NOW)  # fmt: skip
    before = len(wakes)
    assert await store.replay([event_id], NOW + 5) == []
    assert len(wakes) > before
    replayed = await store.get_event(event_id)
    assert replayed is not None
    assert (replayed.state, replayed.reason, replayed.attempts, replayed.attempt_floor) == (
        "pending", None, 1, 1)  # fmt: skip
    assert replayed.updated_at == NOW + 5
    [again] = await store.claim("b", NOW + 5, 30, 10)
    assert [e.id for e in again.events] == [event_id]


async def test_replay_matching_replays_closed_events_by_filter_in_chunks(
    store: EventStore,
) -> None:
    for i in range(6):
        await store.ingest(batch(event(10 + i, "lead")), NOW + i)
    claimed = await claim_map(store, "a", NOW + 10)
    outcomes = [Outcome(claimed[10 + i].events[0].id, "failed" if i < 5 else "synced")
                for i in range(6)]  # fmt: skip
    await store.record("a", outcomes, [], list(claimed), NOW + 10)
    seen: list[int] = []
    flt = EventFilter(state="failed", since=NOW + 1, until=NOW + 5)
    assert await store.count_matching(flt) == 4
    assert await store.replay_matching(flt, NOW + 20, chunk=3, progress=seen.append) == 4
    assert seen == [3, 4]
    assert await store.counts() == {"pending": {"": 4}, "failed": {"": 1}, "synced": {"": 1}}
    by_object = EventFilter(state="failed", object_id=10)
    assert await store.replay_matching(by_object, NOW + 21) == 1
    assert await store.replay_matching(EventFilter(state="failed"), NOW + 22) == 0


async def test_purge_deletes_matching_events_and_their_history_in_chunks(
    store: EventStore,
) -> None:
    for i in range(5):
        await store.ingest(batch(event(i, "lead")), NOW + i)
    claimed = await claim_map(store, "a", NOW + 10)
    await store.record("a", [Outcome(c.events[0].id, "synced") for c in claimed.values()],
                       [], list(claimed), NOW + 10)  # fmt: skip
    old = await ids_of(store, until=NOW + 3)
    assert await store.purge(EventFilter(state="synced", until=NOW + 3), chunk=2) == 3
    assert [await store.get_event(i) for i in old] == [None] * 3
    assert [await store.history(i) for i in old] == [[]] * 3
    assert await store.counts() == {"synced": {"": 2}}


# -- reading -------------------------------------------------------------------------


async def test_list_events_pages_newest_first_below_before_id(store: EventStore) -> None:
    for i in range(5):
        await store.ingest(batch(event(i % 2, "lead")), NOW + i)
    everything = await ids_of(store)
    assert everything == sorted(everything, reverse=True) and len(everything) == 5
    page1 = await store.list_events(EventFilter(), 2)
    page2 = await store.list_events(EventFilter(), 2, before_id=page1[-1].id)
    page3 = await store.list_events(EventFilter(), 2, before_id=page2[-1].id)
    assert [e.id for e in page1 + page2 + page3] == everything
    assert await ids_of(store, object_id=1) == [i for i in everything if i in everything[1::2]]
    assert await store.list_events(EventFilter(states=("failed", "synced")), 10) == []
    assert len(await store.list_events(EventFilter(states=("pending",)), 10)) == 5


# -- dry-run records -----------------------------------------------------------------


async def test_dry_run_records_merge_fields_and_tell_created_from_updated(
    store: EventStore,
) -> None:
    first = await store.upsert_records(
        [
            ("lead", "1", {"LastName": "Lovelace", "Email": "a@x"}),
            ("contact", "2", {"LastName": "H"}),
        ],
        NOW,
    )
    assert first == [("dry-lead-1", True), ("dry-contact-2", True)]
    again = await store.upsert_records([("lead", "1", {"Email": None, "Phone": "5"})], NOW + 1)
    assert again == [("dry-lead-1", False)]
    await store.upsert_records([("contact", "1", {"LastName": "Lovelace"})], NOW + 2)
    records = await store.list_records()
    assert [(r.kind, r.hubspot_id, r.upserted_at) for r in records] == [
        ("contact", "1", NOW + 2), ("lead", "1", NOW + 1), ("contact", "2", NOW)]  # fmt: skip
    [lead] = await store.list_records("lead")
    assert lead.fields == {"LastName": "Lovelace", "Email": None, "Phone": "5"}
    assert lead.target_id == "dry-lead-1"
    assert await store.delete_records("1") == 2
    assert [r.hubspot_id for r in await store.list_records()] == ["2"]


async def test_record_keeps_quoted_texts_exactly_and_makes_a_nul_a_replacement_character(
    store: EventStore,
) -> None:
    await store.ingest(batch(event(1, "lead"), event(2, "lead")), NOW)
    claimed = await store.claim("a", NOW, 30, 10)
    ids = [c.events[0].id for c in claimed]
    odd = 'bad \x00 "quoted" \\ text \u00e9'
    await store.record(
        "a",
        [Outcome(ids[0], "failed", error_code="E\x001", error_message=odd),
         Outcome(ids[1], "failed", error_code="E2", error_message="plain")],
        [ContactUpdate(1, "lead", "L\x001", "lead", 1)], [1, 2], NOW + 1,
    )  # fmt: skip
    first, second = await store.get_event(ids[0]), await store.get_event(ids[1])
    assert first is not None and second is not None
    kept = odd.replace("\x00", "\ufffd")
    assert (first.last_error_code, first.last_error_message) == ("E\ufffd1", kept)
    assert (second.last_error_code, second.last_error_message) == ("E2", "plain")
    assert await store.get_contact(1) == ContactState(1, "lead", "L\ufffd1", "lead", 1)
    assert [(h.error_code, h.error_message) for h in await store.history(ids[0])] == [
        ("E\ufffd1", kept)
    ]


# -- PostgreSQL only -----------------------------------------------------------------


async def wait_for(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.mark.postgres
async def test_postgres_listener_reconnects_when_its_connection_is_killed(
    pg_pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pg_pair
    assert b.listener is not None and b.listener.backend_pid is not None
    old_pid = b.listener.backend_pid
    wakes: list[int] = []
    b.add_commit_listener(lambda: wakes.append(1))
    assert await a.pool.fetchval("SELECT pg_terminate_backend($1)", old_pid)
    listener = b.listener
    await wait_for(lambda: listener.connected.is_set() and listener.backend_pid != old_pid)
    assert wakes == [1]  # woken once, for what may have been missed meanwhile
    await a.ingest(batch(event(1, "lead")), NOW)
    await wait_for(lambda: len(wakes) == 2)


@pytest.mark.postgres
async def test_postgres_refuses_a_schema_newer_than_it_knows(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("CREATE TABLE stagesync_schema (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO stagesync_schema VALUES (99)")
    finally:
        await conn.close()
    with pytest.raises(ConfigError, match="schema is version 99"):
        await PostgresStore(pg_dsn).open()


@pytest.mark.postgres
async def test_postgres_refuses_a_database_that_only_takes_reads(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()  # the schema exists: the refusal is not a failed migration
    await store.close()
    read_only = with_query(pg_dsn, default_transaction_read_only="on")
    with pytest.raises(StoreError, match="only takes reads"):
        await PostgresStore(read_only).open()


@pytest.mark.postgres
async def test_postgres_failing_webhook_commits_make_ping_fail_until_one_succeeds(
    pg_dsn: str,
) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        commit = store._writer._commit

        async def full(group: Any) -> Any:
            raise asyncpg.DiskFullError("could not extend file: No space left on device")

        store._writer._commit = full
        with pytest.raises(asyncpg.DiskFullError):
            await store.ingest(batch(event(1, "lead")), 1.0)
        with pytest.raises(StoreError, match="webhook commits fail: DiskFullError"):
            await store.ping()
        store._writer._commit = commit
        assert (await store.ingest(batch(event(2, "lead")), 2.0)).accepted == 1
        await store.ping()
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_counts_are_unchanged_by_folding_the_deltas(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        for i in range(5):
            await store.ingest(batch(event(i, "lead")), NOW)
        claimed = await claim_map(store, "a", NOW)
        await store.record("a", [Outcome(c.events[0].id, "skipped", reason="stale")
                                 for c in claimed.values()][:3], [], [], NOW)  # fmt: skip
        before = await store.counts()
        await store.fold_counts(min_rows=0)
        assert await store.counts() == before == {"pending": {"": 2}, "skipped": {"stale": 3}}
        assert await store.pool.fetchval("SELECT count(*) FROM event_count_deltas") == 2
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_commits_are_synchronous_whatever_the_dsn_asks(pg_dsn: str) -> None:
    store = PostgresStore(with_query(pg_dsn, synchronous_commit="off"))
    await store.open()
    try:
        assert await store.pool.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_a_request_the_database_refuses_does_not_fail_the_rest_of_its_group(
    pg_dsn: str,
) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        too_big = NewEvent(b"k" * 16, b"{}", 2**63, "contact.creation", 1, None)  # not a bigint
        results = await asyncio.gather(
            store.ingest(batch(event(1, "lead")), NOW),
            store.ingest([too_big], NOW),
            store.ingest(batch(event(2, "lead")), NOW),
            return_exceptions=True,
        )
        assert results[0] == results[2] == IngestResult(1, 0, 0)
        assert isinstance(results[1], Exception)
        assert await store.count_matching(EventFilter()) == 2
    finally:
        await store.close()
