"""kill -9 in the middle of dispatching loses no acknowledged event.

A real ``stagesync serve`` subprocess, reading contacts from a fake HubSpot that answers
in 100 ms, is SIGKILLed while it works through a backlog: some contacts are leased and
being fetched or upserted, some done, most still pending. Restarted on the same file
(with a short ``LEASE_S`` for both runs, so the dead process's leases run out quickly),
it brings every acknowledged event to a final state, and each contact ends as the
target type its HubSpot stage calls for.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import SECRET
from tests.fakes.hubspot import DEFAULT_TOKEN, create_fake_hubspot
from tests.support.process import ServiceProcess, service_env
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

CONTACTS = range(5000, 6500)
STAGE = {i: ("lead" if i % 2 else "customer") for i in CONTACTS}
KIND = {"lead": "lead", "customer": "contact"}
LEASE_S = "2"


def read(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        return conn.execute(sql).fetchall()


async def test_sigkill_while_dispatching_loses_nothing_and_restart_finishes(
    tmp_path: Path,
) -> None:
    db = tmp_path / "stagesync.db"
    fake = create_fake_hubspot(
        token=DEFAULT_TOKEN,
        contacts={i: {"lifecyclestage": s, "email": f"{i}@example.com"} for i, s in STAGE.items()},
        latency_s=0.1,
    )
    async with running_server(fake.app) as hubspot_url:
        env = service_env(
            tmp_path,
            hubspot_access_token=DEFAULT_TOKEN,
            hubspot_api_url=hubspot_url,
            lease_s=LEASE_S,
            log_level="warning",
        )
        service = ServiceProcess(env)
        hook = service.url("/webhooks/hubspot")
        # Two events per contact, the stage in the event deliberately the other one:
        # HubSpot's current stage decides.
        batches = [
            [event(i, "customer" if STAGE[i] == "lead" else "lead") for i in CONTACTS[k : k + 100]]
            for _ in range(2)
            for k in range(0, len(CONTACTS), 100)
        ]
        acked: list[int] = []
        await service.astart()
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                for batch in batches:
                    body, headers = signed(hook, batch, SECRET)
                    answer = await http.post(hook, content=body, headers=headers)
                    assert answer.json()["accepted"] == len(batch)
                    acked += [e["eventId"] for e in batch]
            deadline = time.monotonic() + 20
            while fake.batch_read_calls < 4:
                assert time.monotonic() < deadline, "the dispatcher never got going"
                await asyncio.sleep(0.005)
            service.kill()

            open_at_kill = read(db, "SELECT count(*) FROM events WHERE state = 'pending'")[0][0]
            leased_at_kill = read(db, "SELECT count(*) FROM contact_leases")[0][0]
            assert open_at_kill > 0 and leased_at_kill > 0, "the kill should land mid-dispatch"

            await service.astart()
            deadline = time.monotonic() + 30
            while read(db, "SELECT count(*) FROM events WHERE state IN ('pending','retrying')")[0][
                0
            ]:
                assert time.monotonic() < deadline, service.output()[-2000:]
                await asyncio.sleep(0.05)
        finally:
            service.stop()

    rows = read(db, "SELECT state, reason, raw FROM events")
    final = {orjson.loads(raw)["eventId"]: (state, reason) for state, reason, raw in rows}
    assert sorted(final) == sorted(acked)  # every acknowledged event, once
    assert {s for s, _ in final.values()} <= {"synced", "skipped"}
    assert {r for s, r in final.values() if s == "skipped"} <= {"coalesced"}
    records = read(db, "SELECT hubspot_id, kind FROM records")
    assert sorted(records) == sorted((str(i), KIND[STAGE[i]]) for i in CONTACTS)
