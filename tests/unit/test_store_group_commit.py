"""The grouping engine both stores share (``receiver.store.group_commit``)."""

from __future__ import annotations

import asyncio
import sqlite3

from receiver.hubspot.payload import to_new_events
from receiver.models import NewEvent
from receiver.store.base import IngestResult
from receiver.store.group_commit import (
    GroupCommitter,
    IngestRequest,
    commit_apart,
    fill_group,
    first_copies,
    record_health,
)
from receiver.store.health import CommitHealth, storage_failure
from tests.support.webhooks import event


def batch(*object_ids: int, bad: int = 0) -> list[NewEvent]:
    # A fixed event id and time: the same object id is the same event, the same dedup key.
    items = [event(i, "lead", event_id=i, occurred_at=i) for i in object_ids]
    items += [{"objectId": "x"}] * bad
    return to_new_events(items)


def requests_of(*batches: list[NewEvent]) -> list[IngestRequest]:
    loop = asyncio.new_event_loop()
    try:
        return [IngestRequest(b, 1.0, loop.create_future()) for b in batches]
    finally:
        loop.close()


def test_first_copies_send_each_key_once_and_count_in_group_duplicates_for_later_requests() -> None:
    a, b, c = batch(1, 2), batch(2, 3, bad=1), batch(1)
    news, tally = first_copies([(a, 1.0), (b, 2.0), (c, 3.0)])
    assert [[e.object_id for e in n] for n in news] == [[1, 2], [3, None], []]
    assert tally.results(None) == [
        IngestResult(2, 0, 0),
        IngestResult(1, 1, 1),
        IngestResult(0, 1, 0),
    ]


def test_a_key_the_commit_did_not_insert_counts_as_a_duplicate_of_a_stored_event() -> None:
    events = batch(1, 2)
    _, tally = first_copies([(events, 1.0)])
    assert tally.results({events[1].dedup_key}) == [IngestResult(1, 1, 0)]


def test_fill_group_takes_queued_requests_until_the_event_limit() -> None:
    queue = requests_of(batch(1, 2), batch(3, 4), batch(5), batch(6))
    group = fill_group([queue.pop(0)], lambda: queue.pop(0), lambda: queue, max_events=4)
    assert [len(r.events) for r in group] == [2, 2]
    assert len(queue) == 2


def test_a_refused_group_is_committed_again_request_by_request() -> None:
    group = requests_of(batch(1), batch(2), batch(3))
    tries: list[int] = []

    def commit(part: list[IngestRequest]) -> list[IngestResult]:
        tries.append(len(part))
        if any(r.events[0].object_id == 2 for r in part):
            raise sqlite3.IntegrityError("bad row")
        return [IngestResult(1, 0, 0) for _ in part]

    answers = commit_apart(group, commit)
    assert tries == [3, 1, 1, 1]
    assert answers[0] == answers[2] == IngestResult(1, 0, 0)
    assert isinstance(answers[1], sqlite3.IntegrityError)


def test_health_records_a_database_failure_but_not_one_requests_bad_data() -> None:
    health = CommitHealth()
    record_health(health, [sqlite3.IntegrityError("bad row")], storage_failure)
    assert health.problem() is None
    record_health(health, [sqlite3.OperationalError("disk full")] * 2, storage_failure)
    assert health.problem() == "disk full"
    record_health(health, [IngestResult(1, 0, 0), ValueError("x")], storage_failure)
    assert health.problem() is None


async def test_group_committer_answers_each_request_with_its_own_result() -> None:
    groups: list[int] = []
    commits: list[int] = []

    async def commit(group: list[IngestRequest]) -> list[IngestResult]:
        groups.append(len(group))
        await asyncio.sleep(0)
        return [IngestResult(len(r.events), 0, 0) for r in group]

    committer = GroupCommitter(commit, lambda: commits.append(1))
    committer.start()
    try:
        results = await asyncio.gather(
            *(committer.submit(batch(*range(n)), 1.0) for n in (1, 2, 3))
        )
    finally:
        await committer.stop()
    assert [r.accepted for r in results] == [1, 2, 3]
    assert sum(groups) == 3 and len(commits) == len(groups)
