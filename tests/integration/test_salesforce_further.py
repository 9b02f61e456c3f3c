"""The Salesforce target's org-level behaviour against the fake org, over loopback HTTP:
the API budget, converted Leads, ``PROMOTION=convert`` and Bulk API 2.0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from receiver.errors import RateLimited
from receiver.targets.base import UpsertRequest, UpsertResult
from receiver.targets.salesforce.budget import BUDGET_CODE
from receiver.targets.salesforce.target import SalesforceConfig, SalesforceTarget
from tests.fakes.salesforce import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, FakeSalesforce
from tests.support.servers import running_server

Factory = Callable[..., SalesforceTarget]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def lead(hubspot_id: str, **fields: Any) -> UpsertRequest:
    return UpsertRequest("lead", hubspot_id, {"LastName": "Lovelace", "Company": "ACME", **fields})


@pytest.fixture
def fake() -> FakeSalesforce:
    return FakeSalesforce()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make(fake: FakeSalesforce, clock: Clock) -> AsyncIterator[Factory]:
    async with running_server(fake.app) as base_url, httpx.AsyncClient(timeout=10) as http:

        def factory(**overrides: Any) -> SalesforceTarget:
            settings: dict[str, Any] = {
                "instance_url": base_url,
                "access_token": fake.access_token,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": REFRESH_TOKEN,
                "token_url": f"{base_url}/services/oauth2/token",
                **overrides,
            }
            return SalesforceTarget(config=SalesforceConfig(**settings), http=http, clock=clock)

        yield factory


# -- API budget ---------------------------------------------------------------------------


async def test_answer_above_the_budget_pauses_calls_without_reaching_salesforce(
    fake: FakeSalesforce, make: Factory, clock: Clock
) -> None:
    target = make(api_budget=0.8)
    fake.set_usage(11_999, 15_000)
    await target.upsert(lead("1"))  # the org is now at 12,000 of 15,000: exactly 80%
    assert target.api_status() == {"used": 12_000, "limit": 15_000, "paused": False}
    await target.upsert(lead("2"))
    assert target.api_status() == {"used": 12_001, "limit": 15_000, "paused": True}
    calls = len(fake.log)

    with pytest.raises(RateLimited) as refused:
        await target.upsert(lead("3"))
    assert refused.value.code == BUDGET_CODE
    assert refused.value.retry_after == 900
    batch = await target.upsert_batch([lead("4"), lead("5")])
    assert all(isinstance(r, RateLimited) for r in batch)
    assert len(fake.log) == calls  # nothing reached Salesforce


async def test_paused_budget_is_rechecked_with_limits_once_per_interval(
    fake: FakeSalesforce, make: Factory, clock: Clock
) -> None:
    target = make(api_budget=0.5, api_budget_recheck_s=60)
    fake.set_usage(900, 1_000)
    await target.upsert(lead("1"))
    clock.now += 60
    with pytest.raises(RateLimited):  # still above: one GET /limits, then paused again
        await target.upsert(lead("2"))
    assert fake.calls["limits"] == 1
    with pytest.raises(RateLimited):
        await target.upsert(lead("3"))
    assert fake.calls["limits"] == 1

    fake.set_usage(100)  # the daily window rolled on
    clock.now += 60
    result = await target.upsert(lead("4"))
    assert isinstance(result, UpsertResult)
    assert fake.calls["limits"] == 2
    assert target.api_status() == {"used": 102, "limit": 1_000, "paused": False}
