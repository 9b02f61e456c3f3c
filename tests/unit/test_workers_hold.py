"""Target workers wait (briefly) for a full batch of one kind only when it buys one:
backfill and reconcile upserts always may; a webhook's job only while more of its burst
is coming."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import pytest

from receiver.dispatch import workers as workers_module
from receiver.dispatch.work import ContactWork
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
    calls_are_metered = True

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


def job(object_id: int, stage: str, subscription_type: str = BACKFILL) -> ContactWork:
    raw = {"id": str(object_id), "properties": {"lifecyclestage": stage, "email": "a@b.c"}}
    event = StoredEvent(
        id=next(_ids), state="pending", reason=None, object_id=object_id,
        subscription_type=subscription_type, occurred_at=1, stage=stage, attempts=0,
        last_error_code=None, last_error_message=None, received_at=0.0, updated_at=0.0,
        target_kind=None, target_id=None, raw=raw,
    )  # fmt: skip
    claimed = ClaimedContact(object_id, (event,), None)
    result = ContactWork(claimed, plan_contact(claimed.events, None, CONFIG))
    props = carried_properties(event) or {"lifecyclestage": stage, "email": "a@b.c"}
    result.resolve(props, CONFIG, MAPPINGS)
    return result


class Recorded(list[ContactWork]):
    """The jobs recorded so far, with a condition to wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Condition()


@asynccontextmanager
async def workers_running(
    target: RecordingTarget, more_coming: Callable[[], bool] = lambda: False
) -> AsyncIterator[tuple[TargetWorkers, Recorded]]:
    """Two workers over ``target``; yields them and the list of recorded jobs."""
    recorded = Recorded()

    async def record(done: Sequence[ContactWork]) -> None:
        async with recorded.changed:
            recorded.extend(done)
            recorded.changed.notify_all()

    workers = TargetWorkers(
        target=target, clock=lambda: 0.0, fail=lambda *a: None, record=record,
        give_up=lambda *a: None, more_coming=more_coming,
    )  # fmt: skip
    tasks = [asyncio.create_task(workers.run()) for _ in range(2)]
    try:
        yield workers, recorded
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_recorded(recorded: Recorded, expect: int, within: float = 5.0) -> None:
    async with asyncio.timeout(within), recorded.changed:
        await recorded.changed.wait_for(lambda: len(recorded) >= expect)


async def run_workers(target: RecordingTarget, jobs: list[ContactWork], expect: int) -> None:
    async with workers_running(target) as (workers, recorded):
        workers.put(jobs)
        await until_recorded(recorded, expect)


async def test_bulk_jobs_go_out_in_full_batches_of_one_kind() -> None:
    target = RecordingTarget()
    stages = ["lead", "customer"] * 4  # interleaved kinds, four of each
    await run_workers(target, [job(i, s) for i, s in enumerate(stages, 1)], 8)
    assert sorted(len(b) for b in target.batches) == [4, 4]
    assert all(len({kind for kind, _ in b}) == 1 for b in target.batches)


async def test_a_partial_bulk_batch_waits_a_moment_and_then_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers_module, "HOLD_S", 0.2)
    target = RecordingTarget()
    started = time.monotonic()
    await run_workers(target, [job(1, "lead"), job(2, "lead")], 2)
    assert target.batches == [[("lead", "1"), ("lead", "2")]]
    assert target.at[0] - started >= 0.2


async def test_a_webhook_job_never_waits_for_company(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers_module, "HOLD_S", 5.0)
    target = RecordingTarget()
    started = time.monotonic()
    await run_workers(target, [job(1, "lead", "contact.creation")], 1)
    assert target.at[0] - started < 1.0


async def test_a_webhook_job_waits_for_company_while_more_of_its_burst_is_coming(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers_module, "HOLD_S", 5.0)
    target = RecordingTarget()
    async with workers_running(target, more_coming=lambda: True) as (workers, recorded):
        workers.put([job(n, "lead", "contact.creation") for n in (1, 2)])
        await asyncio.sleep(0.2)
        assert target.batches == []
        workers.put([job(n, "lead", "contact.creation") for n in (3, 4)])
        await until_recorded(recorded, 4)
    assert target.batches == [[("lead", str(n)) for n in (1, 2, 3, 4)]]


async def test_waiting_webhook_jobs_go_once_nothing_more_is_coming(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers_module, "HOLD_S", 5.0)
    target = RecordingTarget()
    coming = [True]
    async with workers_running(target, more_coming=lambda: coming[0]) as (workers, recorded):
        workers.put([job(n, "lead", "contact.creation") for n in (1, 2)])
        await asyncio.sleep(0.1)
        assert target.batches == []
        coming[0] = False
        workers.nudge()
        await until_recorded(recorded, 2, within=1.0)
    assert target.batches == [[("lead", "1"), ("lead", "2")]]


async def test_a_kind_with_a_full_batch_goes_before_a_partial_one_queued_first() -> None:
    target = RecordingTarget()
    jobs = [job(1, "lead", "contact.creation")]
    jobs += [job(n, "customer", "contact.creation") for n in range(2, 6)]
    async with workers_running(target, more_coming=lambda: True) as (workers, recorded):
        workers.put(jobs)
        await until_recorded(recorded, 4)
        assert target.batches[0] == [("contact", str(n)) for n in range(2, 6)]
