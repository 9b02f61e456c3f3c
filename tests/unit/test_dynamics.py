"""The Dynamics 365 target's pure parts and answers, against ``httpx.MockTransport``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest

from receiver.errors import PermanentError, RateLimited, TransientError
from receiver.targets.base import UpsertRequest, UpsertResult
from receiver.targets.dynamics import batch
from receiver.targets.dynamics.settings import DynamicsSettings
from receiver.targets.dynamics.target import DynamicsTarget

ORG = "https://contoso.crm.dynamics.com"
TOKEN_URL = "https://login.microsoftonline.com/tenant-1/oauth2/v2.0/token"
GUID = "7d577253-3ef0-4a0a-bb7f-8335c2596e70"

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
Factory = Callable[..., DynamicsTarget]


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []

    def factory(handler: Handler, **overrides: Any) -> DynamicsTarget:
        async def with_token(request: httpx.Request) -> httpx.Response:
            if str(request.url) == TOKEN_URL:
                return httpx.Response(200, json={"access_token": "tok", "expires_in": 3599})
            return await handler(request)

        client = httpx.AsyncClient(transport=httpx.MockTransport(with_token))
        clients.append(client)
        options = {"url": ORG, "tenant_id": "tenant-1", "client_id": "cid", "client_secret": "s"}
        return DynamicsTarget(settings=DynamicsSettings(**(options | overrides)), http=client)

    yield factory
    for client in clients:
        await client.aclose()


def test_token_url_takes_the_tenant_even_when_configured() -> None:
    settings = DynamicsSettings(tenant_id="abc", token_url="https://login.example/{tenant}/t")
    assert settings.resolved_token_url == "https://login.example/abc/t"
    assert DynamicsSettings(tenant_id="abc").resolved_token_url == (
        "https://login.microsoftonline.com/abc/oauth2/v2.0/token"
    )


def test_concurrency_above_dataverses_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="less than or equal to 50"):
        DynamicsSettings(max_concurrency=52)


def test_a_batch_answer_is_read_part_by_part_change_sets_included() -> None:
    body = (
        "--batchresponse_1\r\nContent-Type: application/http\r\n"
        "Content-Transfer-Encoding: binary\r\n\r\n"
        "HTTP/1.1 201 Created\r\nOData-EntityId: x\r\nContent-Type: application/json\r\n\r\n"
        f'{{"leadid":"{GUID}"}}\r\n'
        "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
        "--changesetresponse_2\r\nContent-Type: application/http\r\n\r\n"
        "HTTP/1.1 204 No Content\r\n\r\n\r\n--changesetresponse_2--\r\n"
        "--batchresponse_1\r\nContent-Type: application/http\r\n\r\n"
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\r\n"
        '{"error":{"code":"0x80040203","message":"bad"}}\r\n'
        "--batchresponse_1--\r\n"
    )
    answers = batch.decode("multipart/mixed; boundary=batchresponse_1", body.encode())
    assert [a.status for a in answers] == [201, 204, 400]
    assert answers[0].body == {"leadid": GUID}
    assert answers[0].headers["odata-entityid"] == "x"
    assert answers[2].body == {"error": {"code": "0x80040203", "message": "bad"}}


def test_a_batch_answer_without_a_boundary_is_refused() -> None:
    with pytest.raises(ValueError, match="no boundary"):
        batch.decode("application/json", b"{}")


async def test_upsert_patches_by_alternate_key_without_the_key_in_the_body(make: Factory) -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"leadid": GUID, "lastname": "L"})

    target = make(handler)
    request = UpsertRequest(
        "lead", "O'Neil", {"lastname": "L", "stagesync_hubspotcontactid": "x", "jobtitle": ""}
    )
    assert await target.upsert(request) == UpsertResult(GUID, created=True)
    sent = seen[0]
    assert sent.method == "PATCH"
    assert unquote(sent.url.path) == ("/api/data/v9.2/leads(stagesync_hubspotcontactid='O''Neil')")
    assert parse_qs(sent.url.query.decode()) == {}
    assert sent.headers["prefer"] == "return=representation"
    assert sent.headers["authorization"] == "Bearer tok"
    assert json.loads(sent.content) == {
        "lastname": "L",
        "jobtitle": None,
        "subject": "HubSpot contact O'Neil",
    }


async def test_an_update_keeps_the_subject_dataverse_holds(make: Factory) -> None:
    bodies: list[bytes] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(204, headers={"OData-EntityId": f"{ORG}/api/data/v9.2/leads({GUID})"})

    result = await make(handler).upsert(
        UpsertRequest("lead", "7", {"lastname": "L"}, may_create=False)
    )
    assert result == UpsertResult(GUID, created=False)
    assert b"subject" not in bodies[0]


async def test_without_a_guid_the_target_id_is_the_alternate_key_reference(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    result = await make(handler).upsert(UpsertRequest("contact", "123", {}))
    assert result.target_id == "contacts(stagesync_hubspotcontactid='123')"


@pytest.mark.parametrize(
    ("answer", "error", "code"),
    [
        (
            httpx.Response(
                429,
                headers={"Retry-After": "12"},
                json={"error": {"code": "0x80072326", "message": "concurrency"}},
            ),
            RateLimited,
            "0x80072326",
        ),
        (httpx.Response(503), TransientError, "http_503"),
        (
            httpx.Response(400, json={"error": {"code": "0x80040203", "message": "Invalid"}}),
            PermanentError,
            "0x80040203",
        ),
    ],
)
async def test_answers_map_onto_the_error_tree_keeping_dataverses_code(
    make: Factory, answer: httpx.Response, error: type[Exception], code: str
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return answer

    with pytest.raises(error) as caught:
        await make(handler).upsert(UpsertRequest("lead", "1", {}))
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]
    if code == "0x80072326":
        assert caught.value.retry_after == 12  # type: ignore[attr-defined]
