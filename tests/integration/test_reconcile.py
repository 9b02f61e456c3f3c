"""Reconciliation end to end, on SQLite and PostgreSQL: the periodic pass, its overlap,
and the contacts it finds unchanged (the real app, the fake HubSpot, the dry-run target)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from receiver.models import Kind
from receiver.targets.base import Target, UpsertRequest, UpsertResult
from tests.integration.conftest import Backend
from tests.integration.test_backfill import (
    ADMIN,
    WAIT_S,
    database,
    portal,
    service,
    synced_ids,
)

__all__ = ["database"]  # the fixture, shared with the backfill tests


async def test_reconcile_overlap_never_queues_a_modification_twice(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(300)
    now_ms = int(time.time() * 1000)
    for object_id in (1, 2, 4, 8, 9):  # customer, subscriber, other, salesqualifiedlead, other
        fake.touch(object_id, when_ms=now_ms - 60_000)
    async with service(tmp_path, database.url, fake) as svc:
        reconciler = svc.ctx.reconciler
        assert reconciler is not None
        first = await reconciler.run_pass()
        second = await reconciler.run_pass()  # within the 5-minute overlap: same contacts
        events = await svc.settle()
        status = (await svc.http.get(svc.base + "/status")).json()
        metrics = (await svc.http.get(svc.base + "/metrics")).text
    assert first is not None and second is not None
    assert (first.found, first.queued) == (2, 2)  # the synced stages only
    assert (second.found, second.queued) == (2, 0)
    assert first.since == pytest.approx(first.watermark - 900)  # no watermark: one interval
    assert second.since == pytest.approx(first.watermark - 300)
    assert sorted(e.object_id for e in events if e.object_id is not None) == [1, 8]
    assert {e.subscription_type for e in events} == {"stagesync.reconcile"}
    assert status["reconcile"]["found"] == 2 and status["reconcile"]["watermark"] is not None
    assert 'stagesync_reconcile_runs_total{result="ok"} 2.0' in metrics
    assert "stagesync_reconcile_lag_seconds" in metrics


async def test_reconcile_skips_contacts_whose_record_is_unchanged_without_a_target_call(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(100)
    wanted = synced_ids(fake)
    async with service(tmp_path, database.url, fake) as svc:
        job_id = await svc.start_backfill()
        await svc.until_job(job_id, "done")
        await svc.settle()
        before = {r.hubspot_id: r.upserted_at for r in await svc.ctx.store.list_records()}
        now_ms = int(time.time() * 1000)
        for object_id in wanted:  # analytics bumped every contact's modification time
            fake.touch(object_id, when_ms=now_ms - 1000)
        fake.touch(wanted[0], when_ms=now_ms - 1000, email="changed@example.com")
        counting = CountingTarget(svc.ctx.dispatcher.target)
        svc.ctx.dispatcher.workers.target = counting  # count the calls from here on
        reconciler = svc.ctx.reconciler
        assert reconciler is not None
        result = await reconciler.run_pass()
        events = await svc.settle()
        after = {r.hubspot_id: r for r in await svc.ctx.store.list_records()}
    assert result is not None and result.queued == len(wanted)
    reconciled = [e for e in events if e.subscription_type == "stagesync.reconcile"]
    by_reason = {(e.state, e.reason) for e in reconciled if e.object_id != wanted[0]}
    assert by_reason == {("skipped", "unchanged")}
    changed = next(e for e in reconciled if e.object_id == wanted[0])
    assert changed.state == "synced"
    assert after[str(wanted[0])].fields["Email"] == "changed@example.com"
    assert counting.records == [str(wanted[0])]
    assert {k: r.upserted_at for k, r in after.items() if k != str(wanted[0])} == {
        k: v for k, v in before.items() if k != str(wanted[0])
    }


class CountingTarget:
    """Passes every call to ``inner`` and notes the records it was asked to write."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.name = inner.name
        self.batch_size = inner.batch_size
        self.one_kind_per_call = inner.one_kind_per_call
        self.calls_are_metered = inner.calls_are_metered
        self.supports_convert = inner.supports_convert
        self.api_status = inner.api_status
        self.records: list[str] = []

    def default_mapping(self, kind: Kind) -> dict[str, str]:
        return self.inner.default_mapping(kind)

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        self.records.append(request.hubspot_id)
        return await self.inner.upsert(request)

    async def upsert_batch(self, requests: Sequence[UpsertRequest]) -> list[Any]:
        self.records += [r.hubspot_id for r in requests]
        return list(await self.inner.upsert_batch(requests))

    async def delete(self, hubspot_id: str) -> int:
        self.records.append(hubspot_id)
        return await self.inner.delete(hubspot_id)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_reconciliation_runs_every_interval_and_zero_turns_it_off(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(20)
    fake.touch(1, when_ms=int(time.time() * 1000) - 1000)
    async with service(tmp_path, database.url, fake, reconcile_interval_s=0.5) as svc:
        deadline = time.monotonic() + WAIT_S
        while True:
            status = (await svc.http.get(svc.base + "/status")).json()
            # the first pass looks back one interval (0.5 s) and misses the contact; a
            # later one looks back from its watermark minus the 5-minute overlap
            if status["reconcile"]["found"]:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        events = await svc.settle()
    assert status["reconcile"]["found"] == 1 and status["reconcile"]["watermark"] is not None
    assert [(e.object_id, e.subscription_type) for e in events] == [(1, "stagesync.reconcile")]
    async with service(tmp_path / "off", database.url, fake, reconcile_interval_s=0) as svc:
        assert svc.ctx.reconciler is None and svc.ctx.backfills is not None


def _stage_filter(body: dict[str, Any]) -> list[str]:
    """The lifecycle stages one search body asks for."""
    filters = [f for group in body["filterGroups"] for f in group["filters"]]
    return next(f["values"] for f in filters if f["propertyName"] == "lifecyclestage")


async def test_reconcile_and_a_default_backfill_take_the_stages_of_the_sync_settings_in_force(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(30)
    now_ms = int(time.time() * 1000)
    # 1 customer, 3 lead, 7 subscriber, 8 salesqualifiedlead (PORTAL_STAGES)
    for object_id in (1, 3, 7, 8):
        fake.touch(object_id, when_ms=now_ms - 60_000)
    async with service(tmp_path, database.url, fake) as svc:
        reconciler = svc.ctx.reconciler
        assert reconciler is not None
        configured = await reconciler.run_pass()
        configured_search = fake.search_bodies[-1]
        saved = await svc.http.put(
            svc.base + "/admin/sync-settings",
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={"version": 0, "contact_sync": False, "lead_stages": ["lead", "subscriber"]},
        )
        assert saved.status_code == 200, saved.text
        changed = await reconciler.run_pass()
        changed_search = fake.search_bodies[-1]
        job_id = await svc.start_backfill()
        job = await svc.until_job(job_id, "done")
        refused = await svc.post("/admin/backfill", {"stages": ["customer"]})
        await svc.settle()
    assert configured is not None and changed is not None
    assert _stage_filter(configured_search) == [
        "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
        "evangelist",
    ]  # fmt: skip
    assert configured.found == 3  # 1, 3 and 8
    # the contact sync is off, and the lead sync takes subscriber instead of the others
    assert _stage_filter(changed_search) == ["lead", "subscriber"]
    assert changed.found == 2  # 3 and 7
    assert job["stages"] == ["lead", "subscriber"]
    assert job["found"] == sum(
        1 for c in fake.contacts.values() if c["lifecyclestage"] in {"lead", "subscriber"}
    )
    assert refused.status_code == 400 and refused.json()["error"] == "stage_not_synced"
