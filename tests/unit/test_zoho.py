"""The Zoho CRM target's request shapes and answers, against ``httpx.MockTransport``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from receiver.errors import AuthExpired, PermanentError, RateLimited, TransientError
from receiver.targets.base import UpsertRequest, UpsertResult
from receiver.targets.zoho.settings import ZohoSettings
from receiver.targets.zoho.target import PLACEHOLDER, ZohoTarget

ACCOUNTS = "https://accounts.zoho.eu"
API = "https://www.zohoapis.eu"
NOON = datetime(2026, 12, 6, 12, 0, tzinfo=UTC).timestamp()

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
Factory = Callable[..., ZohoTarget]


def success(record_id: str = "5725767000000417001", action: str = "insert") -> dict[str, Any]:
    return {"code": "SUCCESS", "action": action, "details": {"id": record_id}, "status": "success"}


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []

    def factory(handler: Handler, tokens: list[str] | None = None, **overrides: Any) -> ZohoTarget:
        issued = iter(tokens or ["tok-1", "tok-2", "tok-3"])

        async def with_token(request: httpx.Request) -> httpx.Response:
            if str(request.url) == f"{ACCOUNTS}/oauth/v2/token":
                body = {"access_token": next(issued), "api_domain": API, "expires_in": 3600}
                return httpx.Response(200, json=body)
            return await handler(request)

        client = httpx.AsyncClient(transport=httpx.MockTransport(with_token))
        clients.append(client)
        options = {
            "accounts_url": ACCOUNTS,
            "client_id": "1000.C",
            "client_secret": "secret",
            "refresh_token": "1000.r",
        }
        settings = ZohoSettings(**(options | overrides))
        return ZohoTarget(settings=settings, http=client, clock=lambda: NOON)

    yield factory
    for client in clients:
        await client.aclose()


async def test_upsert_uses_the_api_domain_the_external_id_and_placeholders(make: Factory) -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": [success()]})

    result = await make(handler).upsert(UpsertRequest("lead", "101", {"Email": "a@b.c"}))
    assert result == UpsertResult("5725767000000417001", created=True)
    sent = seen[0]
    assert str(sent.url) == f"{API}/crm/v8/Leads/upsert"
    assert sent.headers["authorization"] == "Zoho-oauthtoken tok-1"
    assert json.loads(sent.content) == {
        "data": [
            {
                "Email": "a@b.c",
                "Last_Name": PLACEHOLDER,
                "Company": PLACEHOLDER,
                "HubSpot_Contact_ID": "101",
            }
        ],
        "duplicate_check_fields": ["HubSpot_Contact_ID"],
    }


async def test_api_domain_setting_overrides_the_token_answer(make: Factory) -> None:
    hosts: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(200, json={"data": [success(action="update")]})

    target = make(handler, api_domain="https://crm.example.test")
    assert (await target.upsert(UpsertRequest("contact", "1", {}))).created is False
    assert hosts == ["crm.example.test"]


async def test_invalid_token_refreshes_once_and_retries(make: Factory) -> None:
    tokens: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        tokens.append(request.headers["authorization"])
        if request.headers["authorization"].endswith("tok-1"):
            body = {"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token"}
            return httpx.Response(401, json=body)
        return httpx.Response(200, json={"data": [success()]})

    target = make(handler)
    await target.upsert(UpsertRequest("contact", "1", {}))
    assert tokens == ["Zoho-oauthtoken tok-1", "Zoho-oauthtoken tok-2"]
    assert target.token_refreshes == 2


async def test_invalid_token_again_after_the_refresh_is_auth_expired(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = {"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token"}
        return httpx.Response(401, json=body)

    with pytest.raises(AuthExpired) as caught:
        await make(handler).upsert(UpsertRequest("contact", "1", {}))
    assert caught.value.code == "INVALID_TOKEN"


async def test_each_record_of_a_batch_is_classified_on_its_own(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        error = {
            "code": "MANDATORY_NOT_FOUND",
            "details": {"api_name": "Last_Name"},
            "message": "required field not found",
            "status": "error",
        }
        return httpx.Response(207, json={"data": [success("1"), error, success("3", "update")]})

    requests = [UpsertRequest("contact", str(n), {}) for n in range(3)]
    first, second, third = await make(handler).upsert_batch(requests)
    assert first == UpsertResult("1", True) and third == UpsertResult("3", False)
    assert isinstance(second, PermanentError)
    assert (second.code, second.message) == (
        "MANDATORY_NOT_FOUND",
        "required field not found (field: Last_Name)",
    )


@pytest.mark.parametrize(
    ("answer", "error", "code", "wait"),
    [
        (
            httpx.Response(429, json={"code": "TOO_MANY_REQUESTS", "message": "slow"}),
            RateLimited,
            "TOO_MANY_REQUESTS",
            None,
        ),
        (
            httpx.Response(400, json={"code": "LIMIT_REACHED", "message": "limit reached"}),
            RateLimited,
            "LIMIT_REACHED",
            12 * 3600.0,
        ),
        (
            httpx.Response(403, json={"code": "NO_PERMISSION", "message": "API credits exceeded"}),
            RateLimited,
            "NO_PERMISSION",
            12 * 3600.0,
        ),
        (
            httpx.Response(500, json={"code": "INTERNAL_ERROR", "message": "oops"}),
            TransientError,
            "INTERNAL_ERROR",
            None,
        ),
        (
            httpx.Response(400, json={"code": "INVALID_MODULE", "message": "no module"}),
            PermanentError,
            "INVALID_MODULE",
            None,
        ),
    ],
)
async def test_whole_call_answers_map_onto_the_error_tree(
    make: Factory, answer: httpx.Response, error: type[Exception], code: str, wait: float | None
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return answer

    with pytest.raises(error) as caught:
        await make(handler).upsert(UpsertRequest("lead", "1", {}))
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]
    if error is RateLimited:
        assert caught.value.retry_after == wait  # type: ignore[attr-defined]


async def test_delete_searches_by_external_id_and_deletes_by_zoho_id(make: Factory) -> None:
    seen: list[tuple[str, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.url.path.endswith("/search"):
            criteria = parse_qs(request.url.query.decode())["criteria"]
            assert criteria == ["(HubSpot_Contact_ID:equals:55)"]
            if "/Leads/" in request.url.path:
                return httpx.Response(204)
            return httpx.Response(200, json={"data": [{"id": "99"}]})
        return httpx.Response(200, json={"data": [{"code": "SUCCESS", "details": {"id": "99"}}]})

    assert await make(handler).delete("55") == 1
    assert sorted(seen) == [
        ("DELETE", "/crm/v8/Contacts/99"),
        ("GET", "/crm/v8/Contacts/search"),
        ("GET", "/crm/v8/Leads/search"),
    ]
