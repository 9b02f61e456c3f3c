"""kill -9 in the middle of concurrent webhooks loses no acknowledged event.

A real ``stagesync serve`` subprocess on a SQLite file takes signed batches from many
concurrent senders and is SIGKILLed while requests are in flight. After a restart on
the same file, every event whose request was answered 200 is stored exactly once, and
sending those batches again only counts duplicates.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import SECRET
from tests.support.process import ServiceProcess, service_env
from tests.support.webhooks import event, signed

SENDERS = 40
BATCH = 10
ACKED_BEFORE_KILL = 150  # batches answered 200 before the kill


def stored_event_ids(db: Path) -> Counter[Any]:
    """eventId -> number of rows, read straight from the SQLite file."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute("SELECT raw FROM events").fetchall()
    finally:
        conn.close()
    return Counter(orjson.loads(raw)["eventId"] for (raw,) in rows)


async def test_every_acknowledged_event_survives_sigkill_exactly_once(tmp_path: Path) -> None:
    service = ServiceProcess(service_env(tmp_path))
    hook = service.url("/webhooks/hubspot")
    ids = itertools.count(1)
    acked: list[list[dict[str, Any]]] = []
    interrupted = 0  # requests sent but cut off by the kill
    killed = asyncio.Event()

    async def sender(http: httpx.AsyncClient) -> None:
        nonlocal interrupted
        while not killed.is_set():
            events = [event(n, "lead", event_id=n) for n in itertools.islice(ids, BATCH)]
            body, headers = signed(hook, events, SECRET)
            try:
                response = await http.post(hook, content=body, headers=headers)
            except httpx.ConnectError:
                return  # the server is gone: nothing was sent
            except httpx.TransportError:
                interrupted += 1
                return
            assert response.status_code == 200, response.text
            assert response.json() == {"accepted": BATCH, "duplicates": 0, "invalid": 0}
            acked.append(events)

    await service.astart()
    try:
        limits = httpx.Limits(max_connections=SENDERS)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            tasks = [asyncio.create_task(sender(http)) for _ in range(SENDERS)]
            deadline = time.monotonic() + 30
            while len(acked) < ACKED_BEFORE_KILL:
                assert time.monotonic() < deadline, f"only {len(acked)} batches acknowledged"
                assert not any(t.done() for t in tasks), [t.exception() for t in tasks]
                await asyncio.sleep(0.005)
            service.kill()
            killed.set()
            await asyncio.gather(*tasks)
        assert interrupted > 0, "the kill should land while requests are in flight"
        acked_ids = [e["eventId"] for batch in acked for e in batch]

        await service.astart()  # same port, same database
        stored = stored_event_ids(tmp_path / "stagesync.db")
        missing = [i for i in acked_ids if stored[i] == 0]
        assert missing == [], f"{len(missing)} of {len(acked_ids)} acknowledged events lost"
        assert max(stored.values()) == 1, "an event was stored twice"
        async with httpx.AsyncClient(timeout=30) as http:
            for events in acked[:5]:  # a retried delivery of acknowledged batches
                retried = [{**e, "attemptNumber": 1} for e in events]
                body, headers = signed(hook, retried, SECRET)
                response = await http.post(hook, content=body, headers=headers)
                assert response.json() == {"accepted": 0, "duplicates": BATCH, "invalid": 0}
    finally:
        service.stop()
    assert stored_event_ids(tmp_path / "stagesync.db") == stored  # the retries added nothing
