"""HubSpotClient.batch_read and rate_limit_delay: answers mapped to results and errors.

Most tests use ``httpx.MockTransport``; the last group talks real HTTP to the fake
HubSpot in ``tests.fakes.hubspot``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from receiver.errors import (
    AuthExpired,
    PermanentError,
    RateLimited,
    TransientError,
    UpstreamError,
)
from receiver.hubspot.client import HubSpotClient
from receiver.hubspot.pacer import RequestPacer
from tests.fakes.hubspot import ALWAYS, FakeHubSpot, create_fake_hubspot
from tests.support.servers import running_server

TOKEN = "pat-na1-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
BASE = "https://api.hubapi.test"
# 2024-03-10 23:58:00 UTC: two minutes before midnight
BEFORE_MIDNIGHT = datetime(2024, 3, 10, 23, 58, tzinfo=UTC).timestamp()
NOON = datetime(2024, 3, 10, 12, 0, tzinfo=UTC).timestamp()

Handler = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    def __init__(self, start: float = 500.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Harness:
    def __init__(self, client: HubSpotClient, pacer: RequestPacer, clock: FakeClock) -> None:
        self.client, self.pacer, self.clock = client, pacer, clock
        self.calls: list[str] = []


@asynccontextmanager
async def mocked(handler: Handler, *, max_requests: int = 100) -> AsyncIterator[Harness]:
    clock = FakeClock()
    pacer = RequestPacer(max_requests, 10.0, clock=clock, sleep=clock.sleep)
    calls: list[str] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = HubSpotClient(
            http=http, base_url=BASE + "/", token=TOKEN, pacer=pacer, on_call=calls.append
        )
        harness = Harness(client, pacer, clock)
        harness.calls = calls
        yield harness


def found(*ids: int, archived: bool = False) -> dict[str, Any]:
    return {
        "status": "COMPLETE",
        "results": [
            {
                "id": str(i),
                "properties": {"lifecyclestage": "lead", "email": None},
                "archived": archived,
            }
            for i in ids
        ],
    }


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(status, json=body, headers=headers)


def text_answer(status: int, text: str, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(status, text=text, headers=headers)


def rate_limit_body(policy: str) -> dict[str, str]:
    return {
        "status": "error",
        "message": f"You have reached your {policy.lower()} limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": "c033cdaa-2c40-4a64-ae48-b4cec88dad24",
        "policyName": policy,
    }


# -- batch_read over a mocked transport --------------------------------------


async def test_batch_read_posts_ids_and_properties_with_the_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=found(7))

    async with mocked(handler) as h:
        await h.client.batch_read([7, 8], ["lifecyclestage", "email", "email"], now=NOON)
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == "/crm/v3/objects/contacts/batch/read"
    assert request.url.params["archived"] == "false"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {
        "inputs": [{"id": "7"}, {"id": "8"}],
        "properties": ["lifecyclestage", "email"],
    }


async def test_found_contacts_are_keyed_by_integer_id_with_their_properties() -> None:
    async with mocked(answer(200, found(7, 9))) as h:
        result = await h.client.batch_read([7, 9], ["lifecyclestage", "email"], now=NOON)
    assert result == {
        7: {"lifecyclestage": "lead", "email": None},
        9: {"lifecyclestage": "lead", "email": None},
    }
    assert h.calls == ["2xx"]


async def test_multi_status_207_leaves_the_not_found_ids_out() -> None:
    body = found(7) | {
        "numErrors": 1,
        "errors": [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
                "context": {"ids": ["8", "9"]},
            }
        ],
    }
    async with mocked(answer(207, body)) as h:
        assert await h.client.batch_read([7, 8, 9], ["lifecyclestage"], now=NOON) == {
            7: {"lifecyclestage": "lead", "email": None}
        }


async def test_archived_and_merged_away_results_are_left_out() -> None:
    body = {"results": found(7, archived=True)["results"] + found(84805801)["results"]}
    async with mocked(answer(200, body)) as h:
        assert await h.client.batch_read([7, 62241], ["lifecyclestage"], now=NOON) == {}


async def test_250_ids_are_read_in_three_calls_of_at_most_100() -> None:
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ids = [int(i["id"]) for i in json.loads(request.content)["inputs"]]
        sizes.append(len(ids))
        return httpx.Response(200, json=found(*ids))

    async with mocked(handler) as h:
        result = await h.client.batch_read([*range(1, 251), 5, 6], ["lifecyclestage"], now=NOON)
    assert sizes == [100, 100, 50]
    assert sorted(result) == list(range(1, 251))
    assert h.calls == ["2xx"] * 3


async def test_every_call_waits_for_the_pacer() -> None:
    async with mocked(answer(200, found()), max_requests=2) as h:
        await h.client.batch_read(list(range(250)), ["lifecyclestage"], now=NOON)
    assert h.clock.sleeps == [10.0]


async def test_no_ids_make_no_call() -> None:
    async with mocked(answer(500, {})) as h:
        assert await h.client.batch_read([], ["lifecyclestage"], now=NOON) == {}
    assert h.calls == []


async def test_ten_secondly_429_is_rate_limited_for_ten_seconds_and_pauses_all_callers() -> None:
    async with mocked(answer(429, rate_limit_body("TEN_SECONDLY_ROLLING"))) as h:
        with pytest.raises(RateLimited) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=NOON)
        assert h.pacer.paused_until == h.clock.now + 10.0
    assert caught.value.code == "RATE_LIMIT"
    assert caught.value.retry_after == 10.0
    assert "TEN_SECONDLY_ROLLING" in caught.value.message
    assert h.calls == ["4xx"]


async def test_429_retry_after_header_sets_the_delay_and_the_pause() -> None:
    handler = answer(429, rate_limit_body("TEN_SECONDLY_ROLLING"), {"Retry-After": "3"})
    async with mocked(handler) as h:
        with pytest.raises(RateLimited) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=NOON)
        assert h.pacer.paused_until == h.clock.now + 3.0
    assert caught.value.retry_after == 3.0


async def test_daily_429_waits_until_midnight_without_pausing_the_pacer() -> None:
    async with mocked(answer(429, rate_limit_body("DAILY"))) as h:
        with pytest.raises(RateLimited) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=BEFORE_MIDNIGHT)
        assert h.pacer.paused_until == float("-inf")
    assert caught.value.retry_after == 120.0


async def test_a_spent_daily_limit_is_not_asked_again_before_its_retry_time() -> None:
    # Each call before then would only earn another 429 (HubSpot wants under 5% of
    # calls refused); the SPEC re-checks every 15 minutes at most.
    async with mocked(answer(429, rate_limit_body("DAILY"))) as h:
        with pytest.raises(RateLimited):
            await h.client.batch_read([1], ["lifecyclestage"], now=BEFORE_MIDNIGHT)
        with pytest.raises(RateLimited) as again:
            await h.client.batch_read([2], ["lifecyclestage"], now=BEFORE_MIDNIGHT + 100)
        assert h.calls == ["4xx"]
        assert again.value.retry_after == 20.0
        with pytest.raises(RateLimited):
            await h.client.batch_read([3], ["lifecyclestage"], now=BEFORE_MIDNIGHT + 120)
        assert h.calls == ["4xx", "4xx"]


async def test_429_without_a_json_body_is_still_rate_limited() -> None:
    async with mocked(text_answer(429, "Too Many Requests")) as h:
        with pytest.raises(RateLimited) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=NOON)
    assert (caught.value.code, caught.value.retry_after) == ("RATE_LIMIT", 10.0)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_transient_with_the_status_code(status: int) -> None:
    handler = text_answer(status, "<html>bad gateway</html>", {"Retry-After": "30"})
    async with mocked(handler) as h:
        with pytest.raises(TransientError) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=NOON)
    assert not isinstance(caught.value, RateLimited)
    assert caught.value.code == f"http_{status}"
    assert caught.value.retry_after == 30.0
    assert h.calls == ["5xx"]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ReadTimeout("timed out"), "timeout"),
        (httpx.ConnectTimeout("timed out"), "timeout"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "connect_error"),
        (httpx.RemoteProtocolError("peer closed connection"), "network_error"),
    ],
)
async def test_timeouts_and_connection_errors_are_transient(exc: Exception, code: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async with mocked(handler) as h:
        with pytest.raises(TransientError) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=NOON)
    assert caught.value.code == code
    assert h.calls == ["error"]


async def test_an_expired_or_revoked_token_is_transient() -> None:
    body = {
        "status": "error",
        "message": "Authentication credentials not found",
        "category": "INVALID_AUTHENTICATION",
    }
    async with mocked(answer(401, body)) as h:
        with pytest.raises(AuthExpired) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=NOON)
    assert caught.value.code == "INVALID_AUTHENTICATION"
    assert h.calls == ["4xx"]


@pytest.mark.parametrize(
    ("status", "category"),
    [(403, "MISSING_SCOPES"), (400, "VALIDATION_ERROR")],
)
async def test_client_errors_are_permanent_with_hubspots_category_and_message(
    status: int, category: str
) -> None:
    body = {"status": "error", "message": "Nope, because reasons", "category": category}
    async with mocked(answer(status, body)) as h:
        with pytest.raises(PermanentError) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=NOON)
    assert caught.value.code == category
    assert "Nope, because reasons" in caught.value.message
    assert h.calls == ["4xx"]


async def test_a_207_error_other_than_not_found_is_transient() -> None:
    body = found(1) | {"errors": [{"category": "INTERNAL_ERROR", "message": "try later"}]}
    async with mocked(answer(207, body)) as h:
        with pytest.raises(TransientError) as caught:
            await h.client.batch_read([1, 2], ["lifecyclestage"], now=NOON)
    assert caught.value.code == "INTERNAL_ERROR"


async def test_a_success_without_results_is_transient() -> None:
    async with mocked(text_answer(200, "<html>maintenance</html>")) as h:
        with pytest.raises(TransientError) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=NOON)
    assert caught.value.code == "bad_response"


@pytest.mark.parametrize(
    "handler",
    [
        answer(401, {"status": "error", "message": f"Bad token {TOKEN}", "category": "X"}),
        answer(429, {"message": f"slow down {TOKEN}", "policyName": "DAILY"}),
        answer(503, {"message": f"oops {TOKEN}"}),
        answer(207, {"results": [], "errors": [{"category": "X", "message": TOKEN}]}),
    ],
)
async def test_the_token_never_appears_in_errors_even_when_echoed(handler: Handler) -> None:
    async with mocked(handler) as h:
        with pytest.raises(UpstreamError) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=NOON)
        assert TOKEN not in repr(h.client)
    assert TOKEN not in str(caught.value)
    assert TOKEN not in caught.value.message
    assert "[redacted]" in caught.value.message


async def test_the_token_never_appears_in_network_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect, headers={request.headers!r} {TOKEN}")

    async with mocked(handler) as h:
        with pytest.raises(TransientError) as caught:
            await h.client.batch_read([1], ["lifecyclestage"], now=NOON)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize("token", ["", "pat with spaces", "pat\nnewline", "pât"])
async def test_a_token_that_is_no_valid_header_is_refused_without_echoing_it(token: str) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValueError) as caught:
            HubSpotClient(http=http, base_url=BASE, token=token, pacer=RequestPacer())
    assert token not in str(caught.value) or token == ""


# -- against the fake HubSpot, over real HTTP --------------------------------


@asynccontextmanager
async def served(
    fake: FakeHubSpot, token: str = TOKEN, pacer: RequestPacer | None = None
) -> AsyncIterator[HubSpotClient]:
    async with running_server(fake.app) as url, httpx.AsyncClient(timeout=5.0) as http:
        yield HubSpotClient(http=http, base_url=url, token=token, pacer=pacer or RequestPacer())


def portal(latency_s: float = 0.0) -> FakeHubSpot:
    """240 contacts with ids 1..240, of which 3 is archived."""
    contacts = {i: {"lifecyclestage": "lead", "email": f"c{i}@example.com"} for i in range(1, 241)}
    return create_fake_hubspot(token=TOKEN, contacts=contacts, archived={3}, latency_s=latency_s)


async def test_fake_chunks_250_ids_into_three_calls_and_leaves_missing_ids_out() -> None:
    fake = portal(latency_s=0.1)
    fake.contacts[5] = {"lifecyclestage": "customer"}  # no email
    async with served(fake) as client:
        result = await client.batch_read(list(range(1, 251)), ["lifecyclestage", "email"], NOON)
    assert fake.batch_read_calls == 3
    assert fake.ids_per_call == [100, 100, 50]
    assert fake.answers == [207, 200, 207]  # 3 archived; 241..250 missing
    assert sorted(result) == [i for i in range(1, 241) if i != 3]
    assert result[1]["email"] == "c1@example.com"
    assert result[5]["email"] is None
    assert result[5]["lifecyclestage"] == "customer"


async def test_fake_ten_secondly_429_maps_to_rate_limited_and_the_next_call_waits() -> None:
    fake = portal()
    fake.ten_secondly_429 = 1
    clock = FakeClock()
    pacer = RequestPacer(clock=clock, sleep=clock.sleep)
    async with served(fake, pacer=pacer) as client:
        with pytest.raises(RateLimited) as caught:
            await client.batch_read([1], ["lifecyclestage"], NOON)
        assert caught.value.retry_after == 10.0
        assert caught.value.code == "RATE_LIMIT"
        assert "TEN_SECONDLY_ROLLING" in caught.value.message
        result = await client.batch_read([1], ["lifecyclestage"], NOON)
    assert clock.sleeps == [10.0]
    assert result[1]["lifecyclestage"] == "lead"
    assert fake.answers == [429, 200]


async def test_fake_daily_429_waits_until_midnight_and_stays_until_cleared() -> None:
    fake = portal()
    fake.daily_429 = ALWAYS
    async with served(fake) as client:
        for _ in range(2):
            with pytest.raises(RateLimited) as caught:
                await client.batch_read([1], ["lifecyclestage"], BEFORE_MIDNIGHT)
            assert caught.value.retry_after == 120.0
        fake.clear_failures()
        # The client asks again once the limit resets, not before.
        assert 1 in await client.batch_read([1], ["lifecyclestage"], BEFORE_MIDNIGHT + 120)


async def test_fake_503_maps_to_transient_error() -> None:
    fake = portal()
    fake.server_error = 1
    async with served(fake) as client:
        with pytest.raises(TransientError) as caught:
            await client.batch_read([1], ["lifecyclestage"], NOON)
    assert caught.value.code == "http_503"
    assert not isinstance(caught.value, RateLimited)


async def test_fake_wrong_token_is_retried_later_and_the_token_is_not_in_the_error() -> None:
    wrong = "pat-na1-ffffffff-0000-0000-0000-000000000000"
    async with served(portal(), token=wrong) as client:
        with pytest.raises(AuthExpired) as caught:
            await client.batch_read([1], ["lifecyclestage"], NOON)
    assert caught.value.code == "INVALID_AUTHENTICATION"
    assert "Authentication credentials not found" in caught.value.message
    assert wrong not in str(caught.value) and TOKEN not in str(caught.value)


async def test_fake_single_read_answers_the_contact_or_404() -> None:
    fake = portal()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with running_server(fake.app) as url, httpx.AsyncClient(base_url=url) as http:
        ok = await http.get("/crm/v3/objects/contacts/1?properties=email,phone", headers=headers)
        gone = await http.get("/crm/v3/objects/contacts/3", headers=headers)
    assert ok.status_code == 200
    assert ok.json()["properties"]["email"] == "c1@example.com"
    assert ok.json()["properties"]["phone"] is None
    assert "X-HubSpot-RateLimit-Remaining" in ok.headers
    assert gone.status_code == 404
    assert fake.single_read_calls == 2
