"""The shared OAuth token source against ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest

from receiver.errors import AuthExpired, PermanentError, RateLimited, TokenRefused, TransientError
from receiver.targets.oauth import EARLY_S, Token, TokenSource

TOKEN_URL = "https://login.example.com/token"
API_URL = "https://api.example.com/thing"
FORM = {"grant_type": "client_credentials", "client_id": "cid", "client_secret": "csecret-123"}

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
Factory = Callable[..., TokenSource]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []

    def factory(handler: Handler, **overrides: Any) -> TokenSource:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        options: dict[str, Any] = {"label": "Example", "token_url": TOKEN_URL, "form": FORM}
        return TokenSource(http=client, **(options | overrides))

    yield factory
    for client in clients:
        await client.aclose()


def issued(n: int, expires_in: int | None = 3600) -> httpx.Response:
    body: dict[str, Any] = {"access_token": f"tok-{n}", "token_type": "Bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    return httpx.Response(200, json=body)


async def test_first_use_fetches_a_token_and_later_calls_reuse_it(make: Factory) -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        assert dict(httpx.QueryParams(request.content.decode())) == FORM
        return issued(calls)

    source = make(handler)
    assert (await source.token()).access_token == "tok-1"
    assert (await source.token()).access_token == "tok-1"
    assert calls == 1 and source.refreshes == 1


async def test_a_token_is_replaced_shortly_before_expires_in_runs_out(make: Factory) -> None:
    clock = Clock()
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return issued(calls, expires_in=3600)

    source = make(handler, clock=clock)
    first = await source.token()
    clock.now += 3600 - EARLY_S - 1
    assert await source.token() == first
    clock.now += 2
    second = await source.token()
    assert (second.access_token, second.generation) == ("tok-2", 2)


async def test_concurrent_refusals_of_one_token_cost_one_token_request(make: Factory) -> None:
    token_calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal token_calls
        if str(request.url) == TOKEN_URL:
            token_calls += 1
            await asyncio.sleep(0.05)
            return issued(token_calls + 1)
        await asyncio.sleep(0.01)
        ok = request.headers["authorization"] == "Bearer tok-2"
        return httpx.Response(200 if ok else 401)

    source = make(handler, access_token="tok-1")
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))

    async def send(token: Token) -> httpx.Response:
        return await client.get(API_URL, headers={"Authorization": f"Bearer {token.access_token}"})

    answers = await asyncio.gather(*(source.call(send) for _ in range(30)))
    await client.aclose()
    assert {a.status_code for a in answers} == {200}
    assert token_calls == 1 and source.refreshes == 1


async def test_refused_again_after_the_refresh_is_auth_expired(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            return issued(2)
        return httpx.Response(401)

    source = make(handler, access_token="tok-1")

    async def send(token: Token) -> httpx.Response:
        return httpx.Response(401)

    with pytest.raises(AuthExpired):
        await source.call(send)
    assert source.refreshes == 1


async def test_without_a_grant_a_refusal_raises_the_targets_own_error(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no token request expected")

    def no_refresh(stale: Token | None) -> PermanentError:
        return PermanentError("NO_GRANT", f"stale generation {stale and stale.generation}")

    source = make(handler, form=None, access_token="tok-0", no_refresh=no_refresh)

    async def send(token: Token) -> httpx.Response:
        return httpx.Response(401)

    with pytest.raises(PermanentError) as caught:
        await source.call(send)
    assert (caught.value.code, caught.value.message) == ("NO_GRANT", "stale generation 0")


@pytest.mark.parametrize(
    ("answer", "error", "code"),
    [
        (httpx.Response(503), TransientError, "http_503"),
        (httpx.Response(408), TransientError, "http_408"),
        (httpx.Response(429, headers={"Retry-After": "7"}), RateLimited, "http_429"),
        (
            httpx.Response(400, json={"error": "invalid_client", "error_description": "bad"}),
            TokenRefused,  # a PermanentError that the alerts report as a refused token
            "invalid_client",
        ),
        # Zoho answers a refused refresh token with 200 and an error body.
        (httpx.Response(200, json={"error": "invalid_code"}), TokenRefused, "invalid_code"),
        (
            httpx.Response(
                400,
                json={
                    "error": "Access Denied",
                    "error_description": "You have made too many requests continuously.",
                },
            ),
            RateLimited,
            "Access Denied",
        ),
        (httpx.Response(200, json={"token_type": "Bearer"}), TransientError, "bad_token_response"),
    ],
)
async def test_token_endpoint_answers_map_onto_the_error_tree(
    make: Factory, answer: httpx.Response, error: type[Exception], code: str
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return answer

    with pytest.raises(error) as caught:
        await make(handler).token()
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("failure", "code"),
    [(httpx.ConnectError, "connection_error"), (httpx.ConnectTimeout, "timeout")],
)
async def test_an_unreachable_endpoint_is_transient_and_counted_as_an_error(
    make: Factory, failure: type[httpx.RequestError], code: str
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise failure("no answer", request=request)

    calls: list[str] = []
    with pytest.raises(TransientError) as caught:
        await make(handler, on_call=calls.append).token()
    assert caught.value.code == code
    assert "Example token endpoint" in caught.value.message
    assert calls == ["error"]


async def test_secrets_are_scrubbed_and_hidden_from_repr(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        description = "client csecret-123 is not allowed"
        return httpx.Response(
            400, json={"error": "unauthorized_client", "error_description": description}
        )

    source = make(handler)
    with pytest.raises(PermanentError) as caught:
        await source.token()
    assert "csecret-123" not in caught.value.message
    assert "[redacted]" in caught.value.message
    assert "csecret-123" not in repr(source)


async def test_parse_keeps_the_answers_extra_keys(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = {"access_token": "tok", "api_domain": "https://www.zohoapis.eu", "expires_in": 3600}
        return httpx.Response(200, json=body)

    def parse(body: Any) -> dict[str, str]:
        return {"api_domain": str(body["api_domain"])}

    token = await make(handler, parse=parse).token()
    assert token.extras == {"api_domain": "https://www.zohoapis.eu"}
