"""Two real instances on one PostgreSQL database: a round held up past its lease.

An instance checks its lease on its own clock before it records a round. Whatever holds
it up after that check (a freeze, a pause, a slow database) let the round be written
after the lease ran out, when the other instance had claimed the contact and synced the
same events: two final history rows for one event. Here records are held at their
history insert by a table lock for longer than the lease, and in the second test the
instance caught recording is also frozen with SIGSTOP for that long, then resumed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.integration.test_two_instances import (
    LEASE_S,
    all_closed,
    pg_env,
    spray,
    until,
    workload,
)
from tests.support.process import ServiceProcess

pytestmark = pytest.mark.postgres


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_round_held_up_past_its_lease_is_not_recorded_twice(
    tmp_path: Path, pg_dsn: str, db: asyncpg.Connection
) -> None:
    plan = workload(seed=11, first_contact=11_000, contacts=30)
    env = pg_env(tmp_path, pg_dsn)
    a = ServiceProcess(env, log_path=tmp_path / "a.log")
    b = ServiceProcess(env, log_path=tmp_path / "b.log")
    await asyncio.gather(a.astart(), b.astart())
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            locker = db.transaction()
            await locker.start()
            await db.execute("LOCK TABLE event_history IN EXCLUSIVE MODE")
            answers = await spray(http, [a, b], plan.batches)
            assert sum(x["accepted"] for x in answers) == plan.unique
            # Every record waits; the leases of the rounds in flight run out meanwhile,
            # and the instances look for due work every second.
            await asyncio.sleep(LEASE_S + 3)
            await locker.rollback()
            await until(lambda: all_closed(db, plan.unique), within_s=LEASE_S + 20)
        doubled = await db.fetchval(
            "SELECT count(*) FROM (SELECT event_id FROM event_history"
            " GROUP BY event_id HAVING count(*) > 1) AS d"
        )
        ended = await db.fetchval("SELECT count(DISTINCT event_id) FROM event_history")
    finally:
        a.stop()
        b.stop()
    print(f"events with two final history rows: {doubled} of {plan.unique}")
    assert doubled == 0
    assert ended == plan.unique


async def _waiting_instance(db: asyncpg.Connection, within_s: float) -> int:
    """The pid of a service whose database session waits on a lock."""
    found: list[int] = []

    async def someone_waits() -> bool:
        rows = await db.fetch(
            "SELECT application_name FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND application_name LIKE 'stagesync-%'"
        )
        found.extend(int(r[0].removeprefix("stagesync-")) for r in rows)
        return bool(found)

    await until(someone_waits, within_s=within_s)
    return found[0]


async def test_an_instance_frozen_while_recording_does_not_record_twice_or_regress_a_contact(
    tmp_path: Path, pg_dsn: str, db: asyncpg.Connection
) -> None:
    plan = workload(seed=12, first_contact=12_000, contacts=30)
    env = pg_env(tmp_path, pg_dsn)
    a = ServiceProcess(env, log_path=tmp_path / "a.log")
    b = ServiceProcess(env, log_path=tmp_path / "b.log")
    await asyncio.gather(a.astart(), b.astart())
    frozen: int | None = None
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            locker = db.transaction()
            await locker.start()
            await db.execute("LOCK TABLE event_history IN EXCLUSIVE MODE")
            answers = await spray(http, [a, b], plan.batches)
            assert sum(x["accepted"] for x in answers) == plan.unique
            frozen = await _waiting_instance(db, within_s=10)
            os.kill(frozen, signal.SIGSTOP)
            await locker.rollback()  # the other instance goes on; the frozen one cannot
            await asyncio.sleep(LEASE_S + 3)
            os.kill(frozen, signal.SIGCONT)
            frozen = None
            await until(lambda: all_closed(db, plan.unique), within_s=LEASE_S + 20)
        doubled = await db.fetchval(
            "SELECT count(*) FROM (SELECT event_id FROM event_history"
            " GROUP BY event_id HAVING count(*) > 1) AS d"
        )
        stages = dict(await db.fetch("SELECT object_id, stage FROM contacts"))
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        a.stop()
        b.stop()
    print(f"frozen instance: events with two final history rows: {doubled} of {plan.unique}")
    assert doubled == 0
    assert stages == plan.latest  # every contact at its newest stage, none moved back
