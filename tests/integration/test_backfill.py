"""Backfill and reconciliation end to end, on SQLite and PostgreSQL: the real app, the fake
HubSpot's search over loopback (its result cap lowered so paging past it runs in seconds),
the dry-run target."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from receiver.models import EventFilter, StoredEvent
from receiver.web.app import create_app
from receiver.web.context import AppContext
from tests.conftest import build_settings
from tests.fakes.hubspot import ALWAYS, FakeHubSpot, create_fake_hubspot
from tests.fakes.salesforce import FakeSalesforce
from tests.integration.conftest import Backend, fresh_schema, postgres_dsn
from tests.integration.test_sync_health import alert_sink
from tests.integration.test_two_instances import service_dsn
from tests.support.servers import running_server

ADMIN = "admin-token-for-backfill-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
WAIT_S = 30.0
# 60 % of a portal in synced stages (lead and customer), as the bench's portal
PORTAL_STAGES = ("lead", "customer", "subscriber", "lead", "other", "opportunity", "customer",
                 "subscriber", "salesqualifiedlead", "other")  # fmt: skip
SYNCED = {"lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A database the service runs on: each real backend in turn."""
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'store.db'}")
        return
    async with fresh_schema(postgres_dsn()) as dsn:
        yield Backend("postgres", dsn)


def portal(n: int, cap: int = 10_000, latency_s: float = 0.0) -> FakeHubSpot:
    contacts = {
        i: {
            "lifecyclestage": PORTAL_STAGES[i % len(PORTAL_STAGES)],
            "email": f"c{i}@example.com",
            "lastname": f"Last{i}",
            "lastmodifieddate": "2024-01-01T00:00:00.000Z",
        }
        for i in range(1, n + 1)
    }
    fake = create_fake_hubspot(contacts=contacts, latency_s=latency_s)
    fake.search_cap = cap
    return fake


def synced_ids(fake: FakeHubSpot) -> list[int]:
    return sorted(i for i, c in fake.contacts.items() if c["lifecyclestage"] in SYNCED)


@dataclass
class Service:
    app: Starlette
    base: str
    http: httpx.AsyncClient

    @property
    def ctx(self) -> AppContext:
        ctx: AppContext = self.app.state.ctx
        return ctx

    async def post(self, path: str, body: Any = None) -> httpx.Response:
        return await self.http.post(self.base + path, json=body, headers=AUTH)

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(self.base + path, headers=AUTH)

    async def start_backfill(self, body: Any = None) -> int:
        answer = await self.post("/admin/backfill", body)
        assert answer.status_code == 202, answer.text
        job_id: int = answer.json()["id"]
        return job_id

    async def job(self, job_id: int) -> dict[str, Any]:
        answer = await self.get(f"/admin/backfills/{job_id}")
        assert answer.status_code == 200, answer.text
        doc: dict[str, Any] = answer.json()
        return doc

    async def until_job(self, job_id: int, *states: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            doc = await self.job(job_id)
            if doc["state"] in states:
                return doc
            assert time.monotonic() < deadline, doc
            await asyncio.sleep(0.05)

    async def settle(self) -> list[StoredEvent]:
        """Wait until no event is open; every event, oldest first."""
        deadline = time.monotonic() + WAIT_S
        while True:
            counts = await self.ctx.store.counts()
            if not counts.get("pending") and not counts.get("retrying"):
                return list(reversed(await self.ctx.store.list_events(EventFilter(), 100_000)))
            assert time.monotonic() < deadline, counts
            await asyncio.sleep(0.05)


@asynccontextmanager
async def service(
    tmp_path: Path, database_url: str, fake: FakeHubSpot | None, **overrides: Any
) -> AsyncIterator[Service]:
    async with AsyncExitStack() as stack:
        if fake is not None:
            url = await stack.enter_async_context(running_server(fake.app))
            overrides.update(hubspot_access_token=fake.token, hubspot_api_url=url)
        overrides.setdefault("hubspot_rate_limit", 1000)
        settings = build_settings(
            tmp_path, database_url=service_dsn(database_url), admin_token=ADMIN, **overrides
        )
        app = create_app(settings)
        base = await stack.enter_async_context(running_server(app))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        yield Service(app, base, http)


# -- backfill ------------------------------------------------------------------------------


async def test_backfill_syncs_every_contact_in_the_synced_stages_past_the_search_cap(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(3000, cap=500)
    wanted = synced_ids(fake)
    async with service(tmp_path, database.url, fake) as svc:
        job_id = await svc.start_backfill()
        job = await svc.until_job(job_id, "done")
        events = await svc.settle()
        records = await svc.ctx.store.list_records()
    assert job["found"] == job["queued"] == len(wanted) == 1800
    assert job["hubspot_calls"] == fake.search_calls <= math.ceil(len(wanted) / 100) + 2
    # windows of 600 (pages at 0, 200 and 400; 600 is past the cap): two refusals
    assert fake.answers.count(400) == 2
    assert fake.batch_read_calls == 0  # the search answer carried the properties
    assert sorted(int(r.hubspot_id) for r in records) == wanted
    assert {e.state for e in events} == {"synced"}
    assert {e.subscription_type for e in events} == {"stagesync.backfill"}
    sample = next(e for e in events if e.object_id == wanted[0])
    assert sample.raw["id"] == str(wanted[0])
    assert sample.raw["updatedAt"] == "2024-01-01T00:00:00.000Z"
    assert sample.occurred_at == 1_704_067_200_000
    kinds = {int(r.hubspot_id): r.kind for r in records}
    for object_id in wanted:
        stage = fake.contacts[object_id]["lifecyclestage"]
        assert kinds[object_id] == ("contact" if stage in ("opportunity", "customer") else "lead")


async def test_a_backfill_past_the_bulk_threshold_goes_to_salesforce_in_bulk_jobs(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(2000)  # 1,200 in synced stages
    wanted = synced_ids(fake)
    salesforce = FakeSalesforce()
    async with running_server(salesforce.app) as sf_url:
        overrides = {
            "target": "salesforce",
            "salesforce_instance_url": sf_url,
            "salesforce_access_token": salesforce.access_token,
            "salesforce_bulk_threshold": 500,
        }
        async with service(tmp_path, database.url, fake, **overrides) as svc:
            job_id = await svc.start_backfill()
            await svc.until_job(job_id, "done")
            events = await svc.settle()
    assert {e.state for e in events} == {"synced"} and len(events) == len(wanted)
    assert sorted(int(key) for _, key in salesforce.records) == wanted
    in_bulk = sum(len(job.succeeded) for job in salesforce.bulk.jobs.values())
    # Groups of 500 and more go in bulk; what is left after the last one goes in collections.
    assert in_bulk >= 1000, dict(salesforce.calls)
    assert salesforce.calls["upsert"] == 0


async def test_a_token_hubspot_refuses_during_a_backfill_is_alerted(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(10)
    async with (
        alert_sink() as (url, received),
        service(tmp_path, database.url, fake, alert_webhook_url=url) as svc,
    ):
        svc.ctx.alerts.gather_s = 0.2  # type: ignore[union-attr]
        fake.token = "rotated-in-hubspot"  # the configured one is refused from now on
        await svc.start_backfill()
        deadline = time.monotonic() + WAIT_S
        while not received:
            assert time.monotonic() < deadline, "no alert arrived"
            await asyncio.sleep(0.05)
    text = received[0]["text"]
    assert "the HubSpot API refused its token (INVALID_AUTHENTICATION)" in text
    assert fake.token not in text


async def test_backfill_of_given_stages_takes_only_those(tmp_path: Path, database: Backend) -> None:
    fake = portal(200)
    async with service(tmp_path, database.url, fake) as svc:
        job_id = await svc.start_backfill({"stages": ["customer"]})
        job = await svc.until_job(job_id, "done")
        refused = await svc.post("/admin/backfill", {"stages": ["subscriber"]})
    customers = [i for i, c in fake.contacts.items() if c["lifecyclestage"] == "customer"]
    assert job["stages"] == ["customer"] and job["found"] == len(customers) == 40
    assert refused.status_code == 400 and refused.json()["error"] == "stage_not_synced"


async def test_a_second_backfill_while_one_runs_is_refused_with_409(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(2000, latency_s=0.2)
    async with service(tmp_path, database.url, fake) as svc:
        first = await svc.start_backfill()
        second = await svc.post("/admin/backfill")
        assert second.status_code == 409
        assert second.json()["error"] == "backfill_running"
        assert str(first) in second.json()["message"]
        listing = (await svc.get("/admin/backfills")).json()["backfills"]
        assert [j["id"] for j in listing] == [first]
        status = (await svc.http.get(svc.base + "/status")).json()
        assert status["backfill"]["id"] == first


async def test_a_cancelled_backfill_stops_after_its_page_and_keeps_what_it_queued(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(3000, latency_s=0.15)
    async with service(tmp_path, database.url, fake) as svc:
        job_id = await svc.start_backfill()
        deadline = time.monotonic() + WAIT_S
        while (await svc.job(job_id))["pages"] < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        answer = await svc.post(f"/admin/backfills/{job_id}/cancel")
        assert answer.status_code == 200 and answer.json()["cancel_requested"] is True
        job = await svc.until_job(job_id, "cancelled")
        events = await svc.settle()
        again = await svc.post(f"/admin/backfills/{job_id}/cancel")
        # a new backfill may start once the last one ended
        assert (await svc.post("/admin/backfill")).status_code == 202
    assert 0 < job["queued"] < len(synced_ids(fake))
    assert len(events) == job["queued"]
    assert again.status_code == 409 and again.json()["error"] == "backfill_not_running"


async def test_a_restarted_service_resumes_the_backfill_from_its_cursor(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(3000, cap=600, latency_s=0.05)
    wanted = synced_ids(fake)
    async with service(tmp_path, database.url, fake) as svc:
        job_id = await svc.start_backfill()
        deadline = time.monotonic() + WAIT_S
        while (await svc.job(job_id))["pages"] < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    paused = await _job_in_database(database, job_id)
    assert paused.state == "running" and paused.owner is None
    assert paused.cursor["last_id"] is not None
    calls_before = fake.search_calls
    async with service(tmp_path, database.url, fake) as svc:
        job = await svc.until_job(job_id, "done")
        events = await svc.settle()
    first_after = fake.search_bodies[calls_before]
    resumed_from = paused.cursor
    assert first_after.get("after") == resumed_from["after"]
    assert job["found"] == job["queued"] == len(wanted)
    assert sorted(e.object_id for e in events if e.object_id is not None) == wanted
    assert job["hubspot_calls"] == fake.search_calls <= math.ceil(len(wanted) / 100) + 2


async def _job_in_database(database: Backend, job_id: int) -> Any:
    store = database.new()
    await store.open()
    try:
        return await store.get_backfill(job_id)
    finally:
        await store.close()


async def test_without_a_hubspot_token_backfill_is_refused_with_a_clear_message(
    tmp_path: Path, database: Backend
) -> None:
    async with service(tmp_path, database.url, None) as svc:
        answer = await svc.post("/admin/backfill")
        listing = (await svc.get("/admin/backfills")).json()
    assert answer.status_code == 400
    assert answer.json()["error"] == "hubspot_token_required"
    assert "STAGESYNC_HUBSPOT_ACCESS_TOKEN" in answer.json()["message"]
    assert listing == {"backfills": []}


async def test_the_admin_page_lists_backfills_with_their_counts(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(100)
    async with service(tmp_path, database.url, fake) as svc:
        job_id = await svc.start_backfill({"stages": ["lead"]})
        job = await svc.until_job(job_id, "done")
        html = {"Accept": "text/html", "Origin": svc.base}
        login = await svc.http.post(svc.base + "/admin/login", data={"token": ADMIN}, headers=html)
        assert login.status_code in (302, 303), login.text
        page = await svc.http.get(svc.base + "/admin/", headers=html)
    assert page.status_code == 200
    section = page.text.split('aria-label="backfills"', 1)[1].split("</section>", 1)[0]
    cells = [c.strip() for c in section.split("<td>")[1:]]
    assert cells[0].startswith(f"{job_id}<") and cells[1].startswith("done")
    assert cells[3].startswith(f"{job['found']}<") and job["found"] == 20


async def test_the_sync_settings_offer_starts_a_backfill_of_the_added_stages_from_the_page(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(100)
    async with service(tmp_path, database.url, fake) as svc:
        html = {"Accept": "text/html", "Origin": svc.base}
        login = await svc.http.post(svc.base + "/admin/login", data={"token": ADMIN}, headers=html)
        assert login.status_code in (302, 303), login.text
        offer = await svc.http.post(
            svc.base + "/admin/sync/backfill", data={"stages": ["lead"]}, headers=html
        )
        assert offer.status_code == 303, offer.text
        job_id = int(offer.headers["location"].rsplit("=", 1)[1])
        job = await svc.until_job(job_id, "done")
        forged = await svc.http.post(
            svc.base + "/admin/sync/backfill",
            data={"stages": ["lead"]},
            headers={"Accept": "text/html", "Origin": "https://elsewhere.example"},
        )
    assert job["stages"] == ["lead"] and job["found"] == 20
    assert forged.status_code == 403


@pytest.mark.postgres
async def test_two_instances_on_postgresql_run_one_backfill_and_one_reconcile_pass(
    tmp_path: Path, pg_dsn: str
) -> None:
    fake = portal(2000, cap=600, latency_s=0.01)
    wanted = synced_ids(fake)
    now_ms = int(time.time() * 1000)
    for object_id in wanted[:10]:
        fake.touch(object_id, when_ms=now_ms - 1000)
    async with (
        service(tmp_path / "a", pg_dsn, fake) as a,
        service(tmp_path / "b", pg_dsn, fake) as b,
    ):
        job_id = await a.start_backfill()
        refused = await b.post("/admin/backfill")
        job = await b.until_job(job_id, "done")
        events = await a.settle()
        ra, rb = a.ctx.reconciler, b.ctx.reconciler
        assert ra is not None and rb is not None
        passes = await asyncio.gather(ra.run_pass(), rb.run_pass())
    assert refused.status_code == 409
    assert job["found"] == job["queued"] == len(wanted)
    backfilled = sorted(e.object_id for e in events if e.subscription_type == "stagesync.backfill")
    assert backfilled == wanted  # each contact once: one instance ran the job
    assert job["hubspot_calls"] <= math.ceil(len(wanted) / 100) + 2
    ran = [p for p in passes if p is not None]
    assert len(ran) == 1 and ran[0].found == 10


async def test_backfill_waits_out_rate_limits_and_server_errors(
    tmp_path: Path, database: Backend
) -> None:
    fake = portal(600)
    fake.retry_after = "0"
    fake.secondly_429 = 2
    fake.server_error = 2
    async with service(tmp_path, database.url, fake) as svc:
        job_id = await svc.start_backfill()
        job = await svc.until_job(job_id, "done")
    assert job["found"] == len(synced_ids(fake)) == 360
    assert fake.answers.count(429) == 2 and fake.answers.count(503) == 2
    assert job["hubspot_calls"] == fake.search_calls == job["pages"] + 4


async def test_a_backfill_hubspot_keeps_failing_ends_failed_with_the_error(
    tmp_path: Path, database: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("receiver.jobs.paging.BACKOFF_BASE_S", 0.01)
    fake = portal(50)
    fake.server_error = ALWAYS
    async with service(tmp_path, database.url, fake) as svc:
        job_id = await svc.start_backfill()
        job = await svc.until_job(job_id, "failed")
        # a failed job is over: a new one may start
        assert (await svc.post("/admin/backfill")).status_code == 202
    assert job["error"].startswith("http_503: HubSpot search answered 503")
    assert fake.search_calls >= 8 and job["queued"] == 0
