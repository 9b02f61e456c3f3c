"""The target workers' bulk path: a backlog's upserts staged until the threshold, then one
``bulk_upsert``; fewer than that go the usual way."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from receiver.dispatch.work import ContactWork
from receiver.dispatch.workers import TargetWorkers
from receiver.errors import UpstreamError
from receiver.models import ClaimedContact, StoredEvent
from receiver.sync.rules import ContactPlan
from receiver.targets.base import BulkTarget, UpsertRequest, UpsertResult


class BulkScript:
    """A target with a bulk path that records how it was called."""

    name = "bulk-script"
    batch_size = 3
    supports_convert = False
    one_kind_per_call = False
    calls_are_metered = True

    def __init__(self, threshold: int) -> None:
        self.bulk_threshold = threshold
        self.calls: list[tuple[str, int]] = []

    def api_status(self) -> dict[str, Any] | None:
        return None

    def default_mapping(self, kind: str) -> dict[str, str]:
        return {}

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        self.calls.append(("upsert", 1))
        return UpsertResult(f"id{request.hubspot_id}", True)

    async def upsert_batch(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        self.calls.append(("batch", len(requests)))
        return [UpsertResult(f"id{r.hubspot_id}", True) for r in requests]

    async def bulk_upsert(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        self.calls.append(("bulk", len(requests)))
        return [UpsertResult(f"id{r.hubspot_id}", True) for r in requests]

    async def delete(self, hubspot_id: str) -> int:
        return 0

    async def aclose(self) -> None:
        pass


def job(n: int) -> ContactWork:
    carrier = StoredEvent(
        n, "pending", None, n, "contact.creation", n, "lead", 0, None, None, 0.0, 0.0,
        None, None, {},
    )  # fmt: skip
    plan = ContactPlan((), None, (), carrier, (), ())
    out = ContactWork(ClaimedContact(n, (carrier,), None), plan)
    out.request = UpsertRequest("lead", str(n), {"LastName": "X"})
    return out


async def run_workers(
    target: BulkScript, *puts: tuple[list[ContactWork], bool]
) -> list[ContactWork]:
    recorded: list[ContactWork] = []

    async def record(jobs: Sequence[ContactWork]) -> None:
        recorded.extend(jobs)

    workers = TargetWorkers(
        target=target,
        clock=lambda: 0.0,
        fail=lambda jobs, exc, api, streak: None,
        record=record,
        give_up=lambda jobs, why: None,
    )
    task = asyncio.create_task(workers.run())
    for jobs, backlog in puts:
        workers.put(jobs, backlog=backlog)
    await asyncio.sleep(0.05)
    workers.flush()
    await asyncio.sleep(0.05)
    task.cancel()
    return recorded


def test_a_target_with_a_bulk_path_is_a_bulk_target() -> None:
    assert isinstance(BulkScript(5), BulkTarget)


async def test_backlog_rounds_reaching_the_threshold_go_as_one_bulk_upsert() -> None:
    target = BulkScript(threshold=5)
    jobs = [job(n) for n in range(1, 7)]
    recorded = await run_workers(target, (jobs[:3], True), (jobs[3:], True))
    assert target.calls == [("bulk", 6)]
    assert {j.object_id for j in recorded} == set(range(1, 7))
    assert all(j.result[0].state == "synced" for j in jobs)


async def test_a_backlog_below_the_threshold_goes_the_usual_way_once_flushed() -> None:
    target = BulkScript(threshold=10)
    jobs = [job(n) for n in range(1, 5)]
    await run_workers(target, (jobs, True))
    assert target.calls == [("batch", 3), ("upsert", 1)]  # batch_size 3


async def test_a_round_that_is_no_backlog_sends_what_was_staged_with_it() -> None:
    target = BulkScript(threshold=10)
    jobs = [job(n) for n in range(1, 5)]
    await run_workers(target, (jobs[:2], True), (jobs[2:], False))
    assert [kind for kind, _ in target.calls] == ["batch", "upsert"]


class GatedBulk(BulkScript):
    """Bulk calls wait for ``gate``: a Bulk job that runs for minutes."""

    def __init__(self, threshold: int) -> None:
        super().__init__(threshold)
        self.gate = asyncio.Event()
        self.bulk_running = 0

    async def bulk_upsert(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        self.bulk_running += 1
        await self.gate.wait()
        return await super().bulk_upsert(requests)


async def test_bulk_jobs_leave_one_worker_to_webhook_rounds() -> None:
    target = GatedBulk(threshold=2)
    recorded: list[ContactWork] = []

    async def record(jobs: Sequence[ContactWork]) -> None:
        recorded.extend(jobs)

    workers = TargetWorkers(
        target=target, clock=lambda: 0.0, fail=lambda *a: None, record=record,
        give_up=lambda *a: None,
    )  # fmt: skip
    tasks = [asyncio.create_task(workers.run()) for _ in range(3)]
    try:
        for first in (1, 3, 5):  # three bulk groups of two
            workers.put([job(first), job(first + 1)], backlog=True)
        await asyncio.sleep(0.05)
        assert target.bulk_running == 2  # of three workers, one stays free
        workers.put([job(7)])  # a webhook's round
        await asyncio.sleep(0.05)
        assert [j.object_id for j in recorded] == [7]
        target.gate.set()
        await asyncio.sleep(0.05)
        assert target.bulk_running == 3 and len(recorded) == 7
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
