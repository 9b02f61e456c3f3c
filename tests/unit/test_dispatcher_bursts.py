"""Bursts fill the target's batches: while more of a due burst is coming, workers wait for
company; a lone event, or the burst's last round, goes out at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from structlog.testing import capture_logs

from receiver.dispatch import workers as workers_module
from receiver.dispatch.dispatcher import BACKLOG_S, HUBSPOT_BATCH
from receiver.errors import UpstreamError
from receiver.targets.base import UpsertRequest, UpsertResult
from tests.fakes.doubles import ScriptedTarget
from tests.support.dispatch_rig import Clock, Reader, running, stage_event


def portal(ids: range) -> Reader:
    return Reader({n: {"lifecyclestage": "lead", "email": f"{n}@example.com"} for n in ids})


async def test_a_burst_larger_than_a_claim_goes_out_in_one_full_batch() -> None:
    ids = range(1, 2 * HUBSPOT_BATCH + 51)  # two full claims and a partial one
    target = ScriptedTarget(batch_size=len(ids))
    async with running(target=target, hubspot=portal(ids)) as rig:
        stored = await rig.send(*(stage_event(n, "lead") for n in ids))
        await rig.final(*stored)
    # Without waiting, each claim's round would have been a call of its own.
    assert [len(b) for b in target.batches] == [len(ids)]


async def test_a_lone_event_goes_out_at_once_while_nothing_more_is_coming(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers_module, "HOLD_S", 5.0)
    target = ScriptedTarget()
    async with running(target=target, hubspot=portal(range(1, 2))) as rig:
        started = time.monotonic()
        [stored] = await rig.send(stage_event(1, "lead"))
        await rig.final(stored)
        assert time.monotonic() - started < 1.0
    assert target.calls == 1


async def test_a_full_claim_or_a_batch_of_new_events_says_more_is_coming() -> None:
    ids = range(1, HUBSPOT_BATCH + 1)
    target = ScriptedTarget(batch_size=500, gate=asyncio.Event())
    async with running(target=target, hubspot=portal(ids)) as rig:
        dispatcher = rig.dispatcher
        stored = await rig.send(*(stage_event(n, "lead") for n in ids))
        await rig.until(lambda: len(dispatcher.workers.ready) == HUBSPOT_BATCH, what="a claim")
        assert dispatcher.more_coming()  # the claim was full: more may be due
        await rig.until(lambda: not dispatcher.more_coming(), what="an empty claim")
        dispatcher.arrived(target.batch_size - 1)
        assert not dispatcher.more_coming()  # a few stored events are no burst
        dispatcher.arrived(1)
        assert dispatcher.more_coming()  # a batch's worth came since the last claim
        assert target.gate is not None
        target.gate.set()
        await rig.final(*stored)


@dataclass(eq=False)
class SlowBulk(ScriptedTarget):
    """A scripted target with a bulk path whose jobs take longer than a lease."""

    bulk_threshold: int = 0
    job_s: float = 0.0
    clock: Clock | None = None
    bulk_calls: int = 0

    async def bulk_upsert(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        self.bulk_calls += 1
        assert self.clock is not None
        for _ in range(10):  # the job runs; the service's clock moves on with it
            await asyncio.sleep(self.job_s / 10)
            self.clock.advance(self.job_s / 10)
        return list(await self.upsert_batch(requests))


async def test_a_bulk_job_longer_than_the_lease_keeps_its_leases_and_is_recorded() -> None:
    ids = range(1, HUBSPOT_BATCH + 1)
    lease_s = 0.6
    target = SlowBulk(batch_size=10, bulk_threshold=HUBSPOT_BATCH, job_s=3 * lease_s)
    async with running(target=target, hubspot=portal(ids), lease_s=lease_s) as rig:
        target.clock = rig.clock
        stored = await rig.send(*(stage_event(n, "lead") for n in ids))
        rig.clock.advance(2 * BACKLOG_S)  # a backlog: the oldest event has waited
        rig.dispatcher.wake()
        with capture_logs() as logs:
            done = await rig.final(*stored, within=10)
    assert target.bulk_calls == 1  # recorded, not claimed again for a second job
    assert {e.state for e in done} == {"synced"}
    assert not [x for x in logs if x["event"] == "lease_expired_before_record"]
