"""ContactSearch: paging, windows past the result cap, pacing, and answers mapped to errors.

The paging tests talk real HTTP to the fake HubSpot; the pacing and error tests use
``httpx.MockTransport`` with a fake clock, so nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from receiver.errors import AuthExpired, PermanentError, RateLimited, TransientError
from receiver.hubspot.pacer import RequestPacer
from receiver.hubspot.search import ContactSearch, Filter, SearchCursor, parse_time_ms
from tests.fakes.hubspot import DEFAULT_TOKEN, FakeHubSpot, create_fake_hubspot
from tests.support.servers import running_server

BASE = "https://api.hubapi.test"
NOON = datetime(2024, 3, 10, 12, 0, tzinfo=UTC).timestamp()
BEFORE_MIDNIGHT = datetime(2024, 3, 10, 23, 58, tzinfo=UTC).timestamp()
STAGES = ("lead", "customer", "subscriber")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def portal(n: int, cap: int = 10_000) -> FakeHubSpot:
    contacts = {
        i: {"lifecyclestage": STAGES[i % 3], "email": f"c{i}@example.com"} for i in range(1, n + 1)
    }
    fake = create_fake_hubspot(contacts=contacts)
    fake.search_cap = cap
    return fake


@asynccontextmanager
async def live(fake: FakeHubSpot, page_size: int = 200) -> AsyncIterator[ContactSearch]:
    async with running_server(fake.app) as url, httpx.AsyncClient(timeout=10) as http:
        yield ContactSearch(
            http=http,
            base_url=url,
            token=DEFAULT_TOKEN,
            pacer=RequestPacer(1000, 10.0),
            search_pacer=RequestPacer(1000, 1.0),
            page_size=page_size,
        )


async def search_all(search: ContactSearch, filters: list[Filter]) -> tuple[list[int], int]:
    """Every id the search pages through, and the HTTP calls it took."""
    ids: list[int] = []
    calls = 0
    cursor: SearchCursor | None = SearchCursor()
    while cursor is not None:
        page = await search.page(filters, ["lifecyclestage", "email"], cursor, NOON)
        ids += [h.object_id for h in page.hits]
        calls += page.calls
        cursor = page.next
    return ids, calls


# -- paging against the fake -------------------------------------------------------------


async def test_search_pages_past_the_result_cap_with_id_windows_reading_each_contact_once() -> None:
    fake = portal(2500, cap=1000)
    async with live(fake, page_size=100) as search:
        ids, calls = await search_all(search, [])
    assert ids == list(range(1, 2501))
    # 25 pages, plus one refused page each time a window of 1,000 runs out (twice)
    assert calls == 27 == fake.search_calls
    assert fake.answers.count(400) == 2
    windows = [b for b in fake.search_bodies if "after" not in b]
    bounds = [
        f["value"] for b in windows if b["filterGroups"] for f in b["filterGroups"][0]["filters"]
    ]
    assert bounds == ["1000", "2000"]


async def test_search_sends_the_filters_sorted_by_object_id_at_the_largest_page() -> None:
    fake = portal(450)
    async with live(fake) as search:
        ids, calls = await search_all(search, [Filter("lifecyclestage", "IN", values=("lead",))])
    assert ids == [i for i in range(1, 451) if i % 3 == 0]
    assert calls == 1  # 150 leads fit one page of 200
    body = fake.search_bodies[0]
    assert body["sorts"] == [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]
    assert body["limit"] == 200
    assert body["filterGroups"] == [
        {"filters": [{"propertyName": "lifecyclestage", "operator": "IN", "values": ["lead"]}]}
    ]


async def test_search_hits_carry_the_properties_and_update_time_hubspot_returned() -> None:
    fake = portal(3)
    fake.touch(2, when_ms=1_800_000_000_000, lifecyclestage="customer")
    async with live(fake) as search:
        page = await search.page(
            [Filter("lastmodifieddate", "GTE", "1799999999000")],
            ["lifecyclestage", "email"],
            SearchCursor(),
            NOON,
        )
    assert [h.object_id for h in page.hits] == [2]
    hit = page.hits[0]
    assert hit.updated_ms == 1_800_000_000_000
    assert hit.raw() == {
        "id": "2",
        "properties": hit.properties,
        "updatedAt": "2027-01-15T08:00:00.000Z",
    }
    assert hit.properties["lifecyclestage"] == "customer"
    assert hit.properties["email"] == "c2@example.com"
    assert page.next is None


async def test_a_refused_first_page_is_an_error_not_a_new_window() -> None:
    fake = portal(10, cap=0)
    async with live(fake) as search:
        with pytest.raises(PermanentError) as info:
            await search.page([], ["email"], SearchCursor(), NOON)
    assert info.value.code == "VALIDATION_ERROR"
    assert fake.search_calls == 1


async def test_the_fakes_per_second_limit_answers_a_secondly_429() -> None:
    fake = portal(10)
    fake.search_per_second = 1
    async with live(fake) as search:
        await search.page([], ["email"], SearchCursor(), NOON)
        with pytest.raises(RateLimited) as info:
            await search.page([], ["email"], SearchCursor(), NOON)
    assert info.value.retry_after == 1.0


# -- pacing and errors, with a mocked transport --------------------------------------------


Handler = Callable[[httpx.Request], httpx.Response]


@asynccontextmanager
async def mocked(handler: Handler) -> AsyncIterator[tuple[ContactSearch, RequestPacer, FakeClock]]:
    clock = FakeClock()
    shared = RequestPacer(100, 10.0, clock=clock, sleep=clock.sleep)
    own = RequestPacer(4, 1.0, clock=clock, sleep=clock.sleep)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        search = ContactSearch(
            http=http, base_url=BASE, token=DEFAULT_TOKEN, pacer=shared, search_pacer=own
        )
        yield search, shared, clock


def empty(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"total": 0, "results": []})


async def test_search_never_makes_more_than_four_calls_a_second() -> None:
    starts: list[float] = []
    async with mocked(empty) as (search, _, clock):

        async def one() -> None:
            await search.page([], [], SearchCursor(), NOON)
            starts.append(clock())

        for _ in range(12):
            await one()
    for i in range(4, len(starts)):
        assert starts[i] - starts[i - 4] >= 1.0


def answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers or {})

    return handler


@pytest.mark.parametrize(
    ("policy", "message", "now", "delay"),
    [
        ("SECONDLY", "You have reached your secondly limit.", NOON, 1.0),
        (None, "You have reached your secondly limit.", NOON, 1.0),
        ("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.", NOON, 10.0),
        ("DAILY", "You have reached your daily limit.", BEFORE_MIDNIGHT, 120.0),
        ("DAILY", "You have reached your daily limit.", NOON, 900.0),
    ],
)
async def test_rate_limits_wait_as_their_policy_says(
    policy: str | None, message: str, now: float, delay: float
) -> None:
    body: dict[str, Any] = {"status": "error", "message": message, "errorType": "RATE_LIMIT"}
    if policy is not None:
        body["policyName"] = policy
    async with mocked(answer(429, body)) as (search, shared, clock):
        with pytest.raises(RateLimited) as info:
            await search.page([], [], SearchCursor(), now)
        assert info.value.retry_after == pytest.approx(delay)
        # the ten-second window is the portal's: batch reads are held too; the
        # per-second search limit and the daily one hold nobody else
        held = shared.paused_until > clock()
        assert held == (policy == "TEN_SECONDLY_ROLLING")


async def test_retry_after_wins_over_the_policy() -> None:
    body = {"status": "error", "message": "slow down", "policyName": "TEN_SECONDLY_ROLLING"}
    async with mocked(answer(429, body, {"Retry-After": "3"})) as (search, _, _clock):
        with pytest.raises(RateLimited) as info:
            await search.page([], [], SearchCursor(), NOON)
    assert info.value.retry_after == 3.0


async def test_server_errors_are_transient_and_a_bad_token_is_auth_expired() -> None:
    async with mocked(answer(502, {"message": "bad gateway"}, {"Retry-After": "7"})) as (s, _, _c):
        with pytest.raises(TransientError) as info:
            await s.page([], [], SearchCursor(), NOON)
    assert info.value.code == "http_502" and info.value.retry_after == 7.0
    unauthorized = {"message": "no", "category": "INVALID_AUTHENTICATION"}
    async with mocked(answer(401, unauthorized)) as (s, _, _c):
        with pytest.raises(AuthExpired):
            await s.page([], [], SearchCursor(), NOON)


async def test_the_token_never_appears_in_an_error() -> None:
    body = {"message": f"bad token {DEFAULT_TOKEN}", "category": "MISSING_SCOPES"}
    async with mocked(answer(403, body)) as (search, _, _clock):
        with pytest.raises(PermanentError) as info:
            await search.page([], [], SearchCursor(), NOON)
    assert DEFAULT_TOKEN not in str(info.value)
    assert info.value.code == "MISSING_SCOPES"


def test_update_times_parse_to_milliseconds() -> None:
    assert parse_time_ms("2023-11-14T22:13:20.000Z") == 1_700_000_000_000
    assert parse_time_ms("2023-11-14T22:13:20.123+00:00") == 1_700_000_000_123
    assert parse_time_ms("yesterday") is None
    assert parse_time_ms("2023-11-14T22:13:20") is None  # no zone: no guess
