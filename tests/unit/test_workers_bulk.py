"""Target workers and bulk jobs: backfill and reconcile upserts wait (briefly) for a full
batch of one kind; a webhook's job never waits."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

import pytest

from receiver.dispatch import workers as workers_module
from receiver.dispatch.work import Job
from receiver.dispatch.workers import TargetWorkers
from receiver.errors import UpstreamError
from receiver.models import ClaimedContact, Kind, StoredEvent
from receiver.settings import DEFAULT_CONTACT_STAGES, DEFAULT_LEAD_STAGES
from receiver.sync.rules import BACKFILL, RoutingConfig, carried_properties, plan_contact
from receiver.targets.base import UpsertRequest, UpsertResult

CONFIG = RoutingConfig(frozenset(DEFAULT_LEAD_STAGES), frozenset(DEFAULT_CONTACT_STAGES))
MAPPINGS = {"lead": {"Email": "email"}, "contact": {"Email": "email"}}
_ids = itertools.count(1)


class RecordingTarget:
    name = "recording"
    batch_size = 4
    one_kind_per_call = True  # like a Salesforce collection: one object type a call

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, str]]] = []
        self.at: list[float] = []

    def default_mapping(self, kind: Kind) -> dict[str, str]:
        return {}

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        return (await self.upsert_batch([request]))[0]  # type: ignore[return-value]

    async def upsert_batch(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        self.batches.append([(r.kind, r.hubspot_id) for r in requests])
        self.at.append(time.monotonic())
        return [UpsertResult(f"t-{r.hubspot_id}", True) for r in requests]

    async def delete(self, hubspot_id: str) -> int:
        return 0

    async def aclose(self) -> None:
        return None


def job(object_id: int, stage: str, subscription_type: str = BACKFILL) -> Job:
    raw = {"id": str(object_id), "properties": {"lifecyclestage": stage, "email": "a@b.c"}}
    event = StoredEvent(
        id=next(_ids), state="pending", reason=None, object_id=object_id,
        subscription_type=subscription_type, occurred_at=1, stage=stage, attempts=0,
        last_error_code=None, last_error_message=None, received_at=0.0, updated_at=0.0,
        target_kind=None, target_id=None, raw=raw,
    )  # fmt: skip
    claimed = ClaimedContact(object_id, (event,), None)
    result = Job(claimed, plan_contact(claimed.events, None, CONFIG))
    props = carried_properties(event) or {"lifecyclestage": stage, "email": "a@b.c"}
    result.resolve(props, CONFIG, MAPPINGS)
    return result


async def run_workers(target: RecordingTarget, jobs: list[Job], expect: int) -> None:
    recorded: list[Job] = []
    all_recorded = asyncio.Event()

    async def record(done: Sequence[Job]) -> None:
        recorded.extend(done)
        if len(recorded) >= expect:
            all_recorded.set()

    workers = TargetWorkers(
        target=target, clock=lambda: 0.0, fail=lambda *a: None, record=record,
        give_up=lambda *a: None,
    )  # fmt: skip
    tasks = [asyncio.create_task(workers.run()) for _ in range(2)]
    try:
        workers.put(jobs)
        async with asyncio.timeout(5):
            await all_recorded.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_bulk_jobs_go_out_in_full_batches_of_one_kind() -> None:
    target = RecordingTarget()
    stages = ["lead", "customer"] * 4  # interleaved kinds, four of each
    await run_workers(target, [job(i, s) for i, s in enumerate(stages, 1)], 8)
    assert sorted(len(b) for b in target.batches) == [4, 4]
    assert all(len({kind for kind, _ in b}) == 1 for b in target.batches)


async def test_a_partial_bulk_batch_waits_a_moment_and_then_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers_module, "BULK_HOLD_S", 0.2)
    target = RecordingTarget()
    started = time.monotonic()
    await run_workers(target, [job(1, "lead"), job(2, "lead")], 2)
    assert target.batches == [[("lead", "1"), ("lead", "2")]]
    assert target.at[0] - started >= 0.2


async def test_a_webhook_job_never_waits_for_company(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers_module, "BULK_HOLD_S", 5.0)
    target = RecordingTarget()
    started = time.monotonic()
    await run_workers(target, [job(1, "lead", "contact.creation")], 1)
    assert target.at[0] - started < 1.0
