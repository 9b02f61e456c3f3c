"""``stagesync replay`` run as a separate process on the database of a running server."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from receiver.errors import PermanentError
from receiver.models import EventFilter
from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 5.0
# The server polls the database every second for work committed by other processes.
PICKUP_S = 1.5


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Env:
    ctx: Any
    database_url: str
    send: Any

    async def cli(self, *args: str) -> Run:
        """``python -m receiver ARGS`` on the server's database, without blocking the loop."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGESYNC_")}
        env["STAGESYNC_DATABASE_URL"] = self.database_url
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            *args,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(), err.decode())

    async def state(self, event_id: int) -> str:
        found = await self.ctx.store.get_event(event_id)
        assert found is not None
        return str(found.state)

    async def wait_state(self, event_id: int, state: str) -> float:
        """Seconds until the event reaches ``state``."""
        started = time.monotonic()
        while await self.state(event_id) != state:
            assert time.monotonic() - started < WAIT_S, f"event {event_id} never got {state}"
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    async def make_failed(self, object_ids: Sequence[int]) -> list[int]:
        """One failed lead event per contact, as the CRM rejected them; their ids."""
        target = self.ctx.dispatcher.target

        async def rejected(requests: list[Any]) -> list[Any]:
            return [PermanentError("INVALID_EMAIL_ADDRESS", "Email: invalid") for _ in requests]

        top = [e.id for e in await self.ctx.store.list_events(EventFilter(), 1)]
        first = (top[0] if top else 0) + 1
        target.upsert_batch = rejected
        try:
            await self.send([event(i, "lead") for i in object_ids])
            ids = list(range(first, first + len(object_ids)))
            for i in ids:
                await self.wait_state(i, "failed")
        finally:
            del target.upsert_batch
        return ids


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = build_settings(tmp_path)
    app = create_app(settings)
    async with running_server(app) as base, httpx.AsyncClient(timeout=10) as http:

        async def send(events: list[Any]) -> None:
            url = f"{base}/webhooks/hubspot"
            body, headers = signed(url, events, SECRET)
            assert (await http.post(url, content=body, headers=headers)).status_code == 200

        yield Env(app.state.ctx, settings.database_url, send)


async def test_a_cli_replay_is_picked_up_by_the_running_server_within_a_second(env: Env) -> None:
    [event_id] = await env.make_failed([501])

    run = await env.cli("replay", str(event_id))
    assert run.code == 0, run.err
    assert run.out.strip() == "replayed 1 event(s)"
    waited = await env.wait_state(event_id, "synced")
    assert waited < PICKUP_S

    history = await env.ctx.store.history(event_id)
    assert [h.outcome for h in history] == ["failed", "synced"]
    records = await env.ctx.store.list_records("lead")
    assert [r.hubspot_id for r in records] == ["501"]


async def test_a_cli_replay_by_filter_counts_with_dry_run_then_replays_only_matching_events(
    env: Env,
) -> None:
    ids = await env.make_failed([11, 12, 13])

    listing = await env.cli("events", "--state", "failed", "--json")
    assert listing.code == 0, listing.err
    rows = [orjson.loads(line) for line in listing.out.splitlines()]
    assert [r["id"] for r in rows] == sorted(ids, reverse=True)
    assert all(r["last_error"]["code"] == "INVALID_EMAIL_ADDRESS" for r in rows)

    dry = await env.cli("replay", "--state", "failed", "--object-id", "12", "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.out.strip() == "1 event(s) would be replayed"
    assert [await env.state(i) for i in ids] == ["failed"] * 3

    one = await env.cli("replay", "--state", "failed", "--object-id", "12")
    assert one.out.strip() == "replayed 1 event(s)"
    await env.wait_state(ids[1], "synced")
    assert await env.state(ids[0]) == "failed"

    rest = await env.cli("replay", "--state", "failed")
    assert rest.out.strip() == "replayed 2 event(s)"
    for i in ids:
        await env.wait_state(i, "synced")


async def test_a_cli_replay_of_an_event_in_flight_or_unknown_is_refused_with_exit_1(
    env: Env,
) -> None:
    target = env.ctx.dispatcher.target
    gate = asyncio.Event()
    entered = asyncio.Event()
    original = target.upsert_batch

    async def held(requests: list[Any]) -> list[Any]:
        entered.set()
        await gate.wait()
        result: list[Any] = await original(requests)
        return result

    target.upsert_batch = held
    try:
        await env.send([event(7, "lead")])
        await asyncio.wait_for(entered.wait(), WAIT_S)
        run = await env.cli("replay", "1", "99")
    finally:
        gate.set()
        del target.upsert_batch
    assert run.code == 1
    assert "event 1: not replayed" in run.err and "pending" in run.err
    assert "event 99: not replayed, no such event" in run.err
    assert run.out.strip() == "replayed 0 event(s)"
    await env.wait_state(1, "synced")
    assert len(await env.ctx.store.history(1)) == 1


async def test_a_cli_replay_of_ids_with_dry_run_replays_nothing_and_says_what_it_would(
    env: Env,
) -> None:
    [event_id] = await env.make_failed([601])
    before = await env.ctx.store.get_event(event_id)

    dry = await env.cli("replay", str(event_id), str(event_id), "99", "--dry-run")
    assert dry.code == 1
    assert dry.out.strip() == "1 event(s) would be replayed"
    assert dry.err.strip() == "event 99: would not be replayed, no such event"

    ok = await env.cli("replay", str(event_id), "--dry-run")
    assert ok.code == 0, ok.err
    assert ok.out.strip() == "1 event(s) would be replayed"
    await asyncio.sleep(PICKUP_S)  # time for the server to take a replay, had there been one
    assert await env.ctx.store.get_event(event_id) == before


async def test_a_cli_replay_counts_an_id_given_twice_as_one_event(env: Env) -> None:
    [event_id] = await env.make_failed([701])

    run = await env.cli("replay", str(event_id), str(event_id), str(event_id))
    assert run.code == 0, run.err
    assert run.out.strip() == "replayed 1 event(s)"
    await env.wait_state(event_id, "synced")
    assert [h.outcome for h in await env.ctx.store.history(event_id)] == ["failed", "synced"]
