"""Several instances on one PostgreSQL database: real ``stagesync serve`` processes, and
in-process stores standing in for instances where a process would only add start-up time.

Every test here needs ``STAGESYNC_TEST_POSTGRES_DSN`` (skipped with that reason otherwise).
"""

from __future__ import annotations

import asyncio
import getpass
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from receiver.hubspot.payload import to_new_events
from receiver.models import Outcome
from receiver.settings import DEFAULT_CONTACT_STAGES, DEFAULT_LEAD_STAGES
from receiver.store.base import IngestResult
from receiver.store.postgres.schema import MIGRATIONS
from receiver.store.postgres.store import PostgresStore
from tests.conftest import SECRET
from tests.support.process import ServiceProcess, run_cli, service_env
from tests.support.webhooks import event, signed

pytestmark = pytest.mark.postgres

STAGES = DEFAULT_LEAD_STAGES + DEFAULT_CONTACT_STAGES  # in promotion order
LEASE_S = 4.0
NOW = 1_700_000_000.0


def service_dsn(dsn: str) -> str:
    """``dsn`` as STAGESYNC_DATABASE_URL accepts it: settings.py wants a host part, which a
    Unix-socket DSN (``postgresql:///db?host=/run/postgresql``) leaves empty."""
    if dsn.startswith("postgresql:///"):
        return dsn.replace("postgresql:///", f"postgresql://{getpass.getuser()}@/", 1)
    return dsn


@dataclass
class Workload:
    """Signed-batch material: events out of order, some batches delivered twice."""

    batches: list[list[dict[str, Any]]]
    latest: dict[int, str]  # contact -> the stage of its newest event
    unique: int

    def expected_records(self) -> dict[int, tuple[str, str]]:
        """Each contact's final kind and the stage its record of that kind shows."""
        return {
            c: ("contact" if stage in DEFAULT_CONTACT_STAGES else "lead", stage)
            for c, stage in self.latest.items()
        }


def workload(seed: int, first_contact: int, contacts: int) -> Workload:
    """Per contact 2-4 stage changes moving forward (no demotion), so the final record
    does not depend on how the events were coalesced; delivered shuffled, in batches of 8."""
    rng = random.Random(seed)
    base_ms = int(time.time() * 1000) - 600_000
    events: list[dict[str, Any]] = []
    latest = {}
    for c in range(first_contact, first_contact + contacts):
        path = sorted(rng.sample(range(len(STAGES)), rng.randint(2, 4)))
        for step, index in enumerate(path):
            events.append(event(c, STAGES[index], occurred_at=base_ms + step * 1000))
        latest[c] = STAGES[path[-1]]
    rng.shuffle(events)
    batches = [events[i : i + 8] for i in range(0, len(events), 8)]
    again = [[{**e, "attemptNumber": 1} for e in b] for b in rng.sample(batches, len(batches) // 4)]
    return Workload(batches + again, latest, len(events))


async def spray(
    http: httpx.AsyncClient, services: Sequence[ServiceProcess], batches: Sequence[Any]
) -> list[dict[str, int]]:
    """POST each batch, signed, to the services in turn, six at a time; the answers."""
    gate = asyncio.Semaphore(6)

    async def send(i: int, items: list[dict[str, Any]]) -> dict[str, int]:
        url = services[i % len(services)].url("/webhooks/hubspot")
        body, headers = signed(url, items, SECRET)
        async with gate:
            response = await http.post(url, content=body, headers=headers)
        assert response.status_code == 200, response.text
        answer: dict[str, int] = response.json()
        return answer

    return list(await asyncio.gather(*(send(i, b) for i, b in enumerate(batches))))


async def until(check: Callable[[], Awaitable[bool]], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {within_s} s")
        await asyncio.sleep(0.05)


async def all_closed(db: asyncpg.Connection, expected: int) -> bool:
    row = await db.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE state IN ('pending', 'retrying')) AS open"
        " FROM events"
    )
    return bool(row["n"] == expected and row["open"] == 0)


async def assert_each_event_ended_once(db: asyncpg.Connection, expected: int) -> None:
    """Every event is synced or skipped, with exactly one attempt in its history."""
    states = dict(await db.fetch("SELECT state, count(*) FROM events GROUP BY state"))
    assert set(states) <= {"synced", "skipped"} and sum(states.values()) == expected
    row = await db.fetchrow(
        "SELECT count(*) AS attempts, count(DISTINCT event_id) AS events,"
        " count(*) FILTER (WHERE outcome = 'synced') AS synced FROM event_history"
    )
    assert (row["attempts"], row["events"], row["synced"]) == (expected, expected, states["synced"])


def records_by_contact(env: dict[str, str]) -> dict[tuple[int, str], dict[str, Any]]:
    """``stagesync records --json`` (the CLI, on the service's database)."""
    done = run_cli(env, "records", "--json")
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    return {(int(r["hubspot_id"]), r["kind"]): r["fields"] for r in lines}


def final_records(records: dict[tuple[int, str], dict[str, Any]], plan: Workload) -> dict[int, Any]:
    """For each contact, its record of the kind its latest stage syncs as."""
    return {c: records.get((c, kind)) for c, (kind, _) in plan.expected_records().items()}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


def pg_env(tmp_path: Path, pg_dsn: str) -> dict[str, str]:
    return service_env(
        tmp_path, database_url=service_dsn(pg_dsn), target="dry-run", lease_s=str(LEASE_S)
    )


async def start(*services: ServiceProcess) -> None:
    await asyncio.gather(*(s.astart() for s in services))


# -- real processes ------------------------------------------------------------------


async def test_two_instances_sync_every_event_once_and_end_like_a_single_sqlite_one(
    tmp_path: Path, pg_dsn: str, db: asyncpg.Connection, http: httpx.AsyncClient
) -> None:
    plan = workload(seed=6, first_contact=5000, contacts=80)
    env = pg_env(tmp_path, pg_dsn)
    sqlite_env = service_env(tmp_path, target="dry-run")
    a = ServiceProcess(env, log_path=tmp_path / "a.log")
    b = ServiceProcess(env, log_path=tmp_path / "b.log")
    alone = ServiceProcess(sqlite_env, log_path=tmp_path / "sqlite.log")
    await start(a, b, alone)
    try:
        answers, _ = await asyncio.gather(
            spray(http, [a, b], plan.batches), spray(http, [alone], plan.batches)
        )
        assert sum(x["accepted"] for x in answers) == plan.unique  # each once, cluster-wide
        assert sum(x["duplicates"] for x in answers) == sum(map(len, plan.batches)) - plan.unique
        await until(lambda: all_closed(db, plan.unique), within_s=20)
        await assert_each_event_ended_once(db, plan.unique)

        async def alone_done() -> bool:
            counts = (await http.get(alone.url("/status"))).json()["counts"]
            return bool(counts["synced"] + counts["skipped"] == plan.unique)

        await until(alone_done, within_s=20)
    finally:
        for service in (a, b, alone):
            service.stop()
    for service in (a, b):
        assert '"event_synced"' in service.output(), "both instances should have synced events"
    pg_final = final_records(await asyncio.to_thread(records_by_contact, env), plan)
    sqlite_final = final_records(await asyncio.to_thread(records_by_contact, sqlite_env), plan)
    assert pg_final == sqlite_final
    expected = plan.expected_records()
    assert all(pg_final[c] and pg_final[c]["LifecycleStage"] == expected[c][1] for c in expected)


async def test_a_killed_instances_claimed_work_is_finished_by_the_other_after_its_lease(
    tmp_path: Path, pg_dsn: str, db: asyncpg.Connection, http: httpx.AsyncClient
) -> None:
    first = workload(seed=7, first_contact=7000, contacts=40)
    later = workload(seed=8, first_contact=8000, contacts=20)
    env = pg_env(tmp_path, pg_dsn)
    a = ServiceProcess(env, log_path=tmp_path / "a.log")
    b = ServiceProcess(env, log_path=tmp_path / "b.log")
    await start(a, b)
    try:
        # Hold every record() at its history insert, so a claimer is caught holding leases.
        locker = db.transaction()
        await locker.start()
        await db.execute("LOCK TABLE event_history IN EXCLUSIVE MODE")
        answers = await spray(http, [a, b], first.batches)
        waiting: set[int] = set()

        async def someone_waits() -> bool:
            rows = await db.fetch(
                "SELECT application_name FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND application_name LIKE 'stagesync-%'"
            )
            waiting.update(int(r[0].removeprefix("stagesync-")) for r in rows)
            return bool(waiting)

        await until(someone_waits, within_s=10)
        dead, survivor = (a, b) if a.proc and a.proc.pid in waiting else (b, a)
        assert dead.proc is not None
        dead.kill()
        # The dead instance's claimed work: open events of the contacts it holds leases on.
        stuck = dict(
            await db.fetch(
                "SELECT e.id, l.until FROM contact_leases l JOIN events e USING (object_id)"
                " WHERE l.instance = $1 AND l.until > extract(epoch FROM clock_timestamp())"
                " AND e.state IN ('pending', 'retrying')",
                f"stagesync-{dead.proc.pid}",
            )
        )
        await locker.rollback()
        assert stuck, "the killed instance held no leases"
        answers += await spray(http, [survivor], later.batches)
        total = first.unique + later.unique
        assert sum(x["accepted"] for x in answers) == total
        await until(lambda: all_closed(db, total), within_s=LEASE_S + 15)
        await assert_each_event_ended_once(db, total)
        early = await db.fetchval(
            "SELECT count(*) FROM event_history h"
            " JOIN unnest($1::bigint[], $2::float8[]) AS s(event_id, until) USING (event_id)"
            " WHERE h.at < s.until",
            list(stuck),
            list(stuck.values()),
        )
        assert early == 0, "a leased contact was synced before its lease expired"
    finally:
        a.stop()
        b.stop()
    records = await asyncio.to_thread(records_by_contact, env)
    for plan in (first, later):
        finals = final_records(records, plan)
        assert {c: f and f["LifecycleStage"] for c, f in finals.items()} == {
            c: stage for c, (_, stage) in plan.expected_records().items()
        }


async def test_cli_commands_work_on_the_postgres_database_a_server_uses(
    tmp_path: Path, pg_dsn: str, db: asyncpg.Connection, http: httpx.AsyncClient
) -> None:
    env = pg_env(tmp_path, pg_dsn)
    with ServiceProcess(env, log_path=tmp_path / "a.log") as service:
        await spray(http, [service], [[event(1, "lead"), event(2, "customer")]])
        await until(lambda: all_closed(db, 2), within_s=10)

        def cli(*args: str) -> str:
            done = run_cli(env, *args)
            assert done.returncode == 0, done.stderr
            return done.stdout

        status = orjson.loads(await asyncio.to_thread(cli, "status", "--json"))
        assert status["counts"]["synced"] == 2 and status["database"] == "postgres"
        listed = [
            orjson.loads(x) for x in (await asyncio.to_thread(cli, "events", "--json")).splitlines()
        ]
        assert [e["object_id"] for e in listed] == [2, 1]
        shown = orjson.loads(await asyncio.to_thread(cli, "events", "show", str(listed[0]["id"])))
        assert [h["outcome"] for h in shown["history"]] == ["synced"]
        assert "replayed 1" in await asyncio.to_thread(cli, "replay", str(listed[0]["id"]))

        async def synced_twice() -> bool:
            return (
                len(
                    await db.fetch(
                        "SELECT 1 FROM event_history WHERE event_id = $1", listed[0]["id"]
                    )
                )
                == 2
            )

        await until(synced_twice, within_s=5)  # the running server took the replay
        assert "purged 2" in await asyncio.to_thread(
            cli, "purge", "--state", "synced", "--before", "2999-01-01"
        )
        assert await db.fetchval("SELECT count(*) FROM events") == 0


# -- in-process stores as instances --------------------------------------------------


def batch(*items: dict[str, Any]) -> Any:
    return to_new_events(list(items))


async def test_an_ingest_or_replay_on_one_instance_wakes_the_other(
    pg_pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pg_pair
    wakes: list[int] = []
    b.add_commit_listener(lambda: wakes.append(1))
    await b.ingest(batch(event(1, "lead")), NOW)
    assert len(wakes) == 1  # its own commit, called directly
    await a.ingest(batch(event(2, "lead")), NOW)
    # Notifications arrive in commit order: had b's own come back, it would be counted first.
    await until(lambda: _true(len(wakes) >= 2), within_s=5)
    assert len(wakes) == 2
    [c] = await a.claim("a", NOW, 30, 1)
    await a.record("a", [Outcome(c.events[0].id, "failed")], [], [c.object_id], NOW)
    await a.replay([c.events[0].id], NOW + 1)
    await until(lambda: _true(len(wakes) >= 3), within_s=5)


async def _true(value: bool) -> bool:
    return value


async def test_instances_opening_at_once_migrate_the_schema_once(pg_dsn: str) -> None:
    stores = [PostgresStore(pg_dsn) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        versions = await stores[0].pool.fetch("SELECT version FROM stagesync_schema")
        assert versions == [(len(MIGRATIONS),)]
        assert await stores[1].ingest(batch(event(1, "lead")), NOW) == IngestResult(1, 0, 0)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_concurrent_claims_from_two_instances_never_share_a_contact(
    pg_pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pg_pair
    await a.ingest(batch(*(event(i, "lead") for i in range(300))), NOW)
    owners: dict[int, list[str]] = {}

    async def claimer(store: PostgresStore, owner: str) -> None:
        while claimed := await store.claim(owner, NOW, 60, 7):
            for c in claimed:
                owners.setdefault(c.object_id, []).append(owner)

    await asyncio.gather(*(claimer(s, f"{s.token}-{n}") for s in (a, b) for n in range(3)))
    assert len(owners) == 300
    assert all(len(o) == 1 for o in owners.values())
    assert len({o[0].split("-")[0] for o in owners.values()}) == 2  # both instances took work
