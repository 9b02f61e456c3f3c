"""Retention: the background task deletes old synced, skipped and invalid events only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.errors import PermanentError
from receiver.hubspot.payload import to_new_events
from receiver.models import EventFilter, Outcome
from receiver.ops import retention
from receiver.store.factory import make_store
from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.support.clock import Clock
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

T0 = 1_767_225_600.0
DAY = 86_400.0
WAIT_S = 5.0


async def wait_for(check: Any) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def service(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Any, Clock, Any]]:
    clock = Clock(T0)
    settings = build_settings(tmp_path, lease_s=100 * DAY, **overrides)
    app = create_app(settings, clock=clock)
    async with running_server(app) as base, httpx.AsyncClient(timeout=10) as http:

        async def send(events: list[Any]) -> None:
            url = f"{base}/webhooks/hubspot"
            body, headers = signed(url, events, SECRET, now_ms=int(clock() * 1000))
            assert (await http.post(url, content=body, headers=headers)).status_code == 200

        yield app.state.ctx, clock, send


async def states(store: Any) -> dict[int, str]:
    return {e.id: e.state for e in await store.list_events(EventFilter(), 1000)}


async def test_retention_deletes_old_synced_skipped_and_invalid_events_and_keeps_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "INTERVAL_S", 0.02)
    async with service(tmp_path, retention_days=30) as (ctx, clock, send):
        store = ctx.store
        target = ctx.dispatcher.target

        # Old, at T0: one of each closed state, and one held in flight (pending).
        async def rejected(requests: list[Any]) -> list[Any]:
            return [PermanentError("INVALID_FIELD", "bad") for _ in requests]

        target.upsert_batch = rejected
        await send([event(1, "lead")])  # 1 failed

        async def closed() -> bool:
            return all(s not in ("pending", "retrying") for s in (await states(store)).values())

        await wait_for(closed)
        del target.upsert_batch
        await send([event(2, "lead"), event(3, "other"), {"objectId": "bad"}])  # 2, 3, 4
        await wait_for(closed)

        gate = asyncio.Event()
        entered = asyncio.Event()
        original = target.upsert_batch

        async def held(requests: list[Any]) -> list[Any]:
            entered.set()
            await gate.wait()
            result: list[Any] = await original(requests)
            return result

        target.upsert_batch = held
        await send([event(5, "customer")])  # 5 stays pending while the CRM call hangs
        await asyncio.wait_for(entered.wait(), WAIT_S)

        # Young, at T0 + 25 days: one of each again.
        clock.now = T0 + 25 * DAY
        target.upsert_batch = original
        await send([event(6, "lead"), event(7, "other"), {"objectId": "worse"}])  # 6, 7, 8

        async def young_closed() -> bool:
            s = await states(store)
            return all(s.get(i) in ("synced", "skipped", "invalid") for i in (6, 7, 8))

        await wait_for(young_closed)
        before = await states(store)
        assert before == {
            1: "failed", 2: "synced", 3: "skipped", 4: "invalid", 5: "pending",
            6: "synced", 7: "skipped", 8: "invalid",
        }  # fmt: skip

        # At T0 + 31 days the old closed events are past 30 days; the young are 6 days old.
        clock.now = T0 + 31 * DAY

        async def swept() -> bool:
            return 2 not in await states(store)

        await wait_for(swept)
        after = await states(store)
        assert after == {1: "failed", 5: "pending", 6: "synced", 7: "skipped", 8: "invalid"}
        assert await store.history(2) == []
        assert [h.outcome for h in await store.history(1)] == ["failed"]
        counts = await store.counts()
        assert sum(counts.get("synced", {}).values()) == 1
        assert sum(counts.get("invalid", {}).values()) == 1

        # Once the held event syncs it is closed and old, so the next sweep takes it.
        gate.set()

        async def synced_then_swept() -> bool:
            return 5 not in await states(store)

        await wait_for(synced_then_swept)
        assert [r.hubspot_id for r in await store.list_records("contact")] == ["5"]


async def test_retention_0_starts_no_task_and_keeps_every_event(tmp_path: Path) -> None:
    async with service(tmp_path, retention_days=0) as (ctx, clock, send):
        await send([event(1, "lead")])
        assert [t for t in asyncio.all_tasks() if t.get_name() == "retention"] == []
        clock.now = T0 + 1000 * DAY
        assert await retention.sweep(ctx.store, clock(), 1000) == 0
        assert list((await states(ctx.store)).keys()) == [1]


async def test_a_sweep_deletes_a_large_backlog_in_small_batches(tmp_path: Path) -> None:
    store = make_store(build_settings(tmp_path).database_url)
    await store.open()
    try:
        await store.ingest(to_new_events([event(100 + i, "lead") for i in range(23)]), T0)
        await store.ingest(to_new_events([event(200 + i, "lead") for i in range(3)]), T0 + 20 * DAY)
        # Pending events are never deleted, however old.
        assert await retention.sweep(store, T0 + 40 * DAY, 30, batch=5) == 0

        ids = list((await states(store)).keys())
        await store.record("test", [Outcome(i, "synced") for i in ids], [], [], T0 + DAY)
        chunks: list[int] = []
        original = store.purge

        async def recording_purge(flt: Any, chunk: int = 1000) -> int:
            chunks.append(chunk)
            result: int = await original(flt, chunk)
            return result

        store.purge = recording_purge  # type: ignore[method-assign]
        assert await retention.sweep(store, T0 + 40 * DAY, 30, batch=5) == 23
        assert chunks == [5]
        assert sorted(await states(store)) == sorted(ids)[-3:]
    finally:
        await store.close()
