"""End to end: signed webhooks through the real service, the fake HubSpot and the fake
Salesforce, all over loopback HTTP.

Retries use ``RETRY_BASE_S=0.2`` and ``RETRY_MAX_S=1`` so that outages and rate limits
resolve in about a second instead of minutes; the schedule's shape is the real one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from receiver.app import create_app
from receiver.models import OPEN_STATES, EventFilter, StoredEvent
from receiver.store.base import EventStore
from receiver.targets.salesforce_fields import PLACEHOLDER
from tests.conftest import SECRET, build_settings
from tests.fakes.hubspot import DEFAULT_TOKEN, FakeHubSpot
from tests.fakes.salesforce import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, FakeSalesforce
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

LATENCY_S = 0.15
WAIT_S = 15.0
_clock_ms = itertools.count(int(time.time() * 1000))


def later_ms() -> int:
    """A strictly increasing ``occurredAt``, so that each event is newer than the last."""
    return next(_clock_ms)


@dataclass
class Service:
    """The running service and both fakes."""

    url: str
    app: Starlette
    hubspot: FakeHubSpot
    salesforce: FakeSalesforce
    settings_env: dict[str, str]
    http: httpx.AsyncClient

    @property
    def store(self) -> EventStore:
        store: EventStore = self.app.state.ctx.store
        return store

    async def send(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """POST one signed webhook batch; returns the answer's JSON."""
        url = f"{self.url}/webhooks/hubspot"
        body, headers = signed(url, events, SECRET)
        response = await self.http.post(url, content=body, headers=headers)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def events_of(self, object_id: int) -> list[StoredEvent]:
        return await self.store.list_events(EventFilter(object_id=object_id), 100)

    async def only_event(self, object_id: int) -> StoredEvent:
        events = await self.events_of(object_id)
        assert len(events) == 1, events
        return events[0]

    async def settled(self, object_ids: Iterable[int], timeout: float = WAIT_S) -> None:
        """Wait until no event of these contacts is pending or retrying."""
        wanted = set(object_ids)

        async def done() -> bool:
            for object_id in wanted:
                events = await self.events_of(object_id)
                if not events or any(e.state in OPEN_STATES for e in events):
                    return False
            return True

        await wait_until(done, timeout)

    async def all_closed(self, total: int, timeout: float = WAIT_S) -> dict[str, int]:
        """Wait until ``total`` events are stored and none is open; counts per state."""

        async def counts() -> dict[str, int]:
            by_reason = await self.store.counts()
            return {state: sum(n.values()) for state, n in by_reason.items()}

        async def done() -> bool:
            now = await counts()
            return sum(now.values()) >= total and not any(now.get(s) for s in OPEN_STATES)

        await wait_until(done, timeout)
        return {state: n for state, n in (await counts()).items() if n}


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {timeout} s")
        await asyncio.sleep(0.02)


async def wait_for_calls(fake: FakeSalesforce, count: int, timeout: float = WAIT_S) -> None:
    async def seen() -> bool:
        return len(fake.log) >= count

    await wait_until(seen, timeout)


ServiceFactory = Callable[..., Any]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """``async with start(**settings) as service``: fakes first, then the service."""
    stack = AsyncExitStack()

    @asynccontextmanager
    async def factory(
        *,
        contacts: dict[int, dict[str, str]] | None = None,
        refresh: bool = True,
        latency_s: float = 0.0,
        **overrides: Any,
    ) -> AsyncIterator[Service]:
        hubspot = FakeHubSpot(contacts=dict(contacts or {}))
        salesforce = FakeSalesforce(latency_s=latency_s)
        async with AsyncExitStack() as inner:
            hs_url = await inner.enter_async_context(running_server(hubspot.app))
            sf_url = await inner.enter_async_context(running_server(salesforce.app))
            env: dict[str, Any] = {
                "target": "salesforce",
                "hubspot_access_token": DEFAULT_TOKEN,
                "hubspot_api_url": hs_url,
                "salesforce_instance_url": sf_url,
                "salesforce_access_token": salesforce.access_token,
                "salesforce_token_url": f"{sf_url}/services/oauth2/token",
                "retry_base_s": 0.2,
                "retry_max_s": 1,
            }
            if refresh:
                env |= {
                    "salesforce_client_id": CLIENT_ID,
                    "salesforce_client_secret": CLIENT_SECRET,
                    "salesforce_refresh_token": REFRESH_TOKEN,
                }
            env |= overrides
            settings = build_settings(tmp_path, **env)
            app = create_app(settings)
            url = await inner.enter_async_context(running_server(app))
            http = await inner.enter_async_context(httpx.AsyncClient(timeout=10))
            flat = {f"STAGESYNC_{k.upper()}": str(v) for k, v in env.items()}
            flat["STAGESYNC_DATABASE_URL"] = settings.database_url
            flat["STAGESYNC_HUBSPOT_CLIENT_SECRET"] = SECRET
            yield Service(url, app, hubspot, salesforce, flat, http)

    async with stack:
        yield factory


def person(stage: str, **properties: str) -> dict[str, str]:
    return {"lifecyclestage": stage, **properties}


# -- burst -----------------------------------------------------------------------------


async def test_burst_of_1000_contacts_costs_about_5_to_10_salesforce_calls(
    start: ServiceFactory,
) -> None:
    ids = range(1, 1001)
    contacts = {n: person("lead", lastname=f"Doe{n}", company="ACME") for n in ids}
    async with start(contacts=contacts, latency_s=LATENCY_S) as service:
        began = time.monotonic()
        batches = [[event(n, "lead") for n in ids[i : i + 100]] for i in range(0, 1000, 100)]
        await asyncio.gather(*(service.send(batch) for batch in batches))
        counts = await service.all_closed(1000)
        elapsed = time.monotonic() - began
        fake = service.salesforce
        calls = fake.calls["collection_upsert"] + fake.calls["upsert"]
        print(f"burst: {calls} calls {dict(fake.calls)} in {elapsed:.2f} s", file=sys.stderr)
        assert counts == {"synced": 1000}
        assert len(fake.records) == 1000
        assert 5 <= calls <= 10
