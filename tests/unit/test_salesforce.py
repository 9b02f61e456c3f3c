"""The Salesforce target against ``httpx.MockTransport``: field rules and error mapping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from receiver.errors import (
    AuthExpired,
    PermanentError,
    RateLimited,
    TransientError,
    UpstreamError,
)
from receiver.targets.base import UpsertRequest, UpsertResult
from receiver.targets.salesforce.config import SalesforceConfig
from receiver.targets.salesforce.fields import PLACEHOLDER
from receiver.targets.salesforce.target import SalesforceTarget

INSTANCE = "https://acme.my.salesforce.com"
TOKEN_URL = "https://login.salesforce.com/services/oauth2/token"
ACCESS = "00Dxx0000001gPL!AccessTokenSecretValue"
SECRET = "ClientSecretValue5d41402abc"
REFRESH = "RefreshTokenSecretValue9f8e7d"
UPSERT_PATH = "/services/data/v62.0/sobjects/Lead/HubSpot_Contact_ID__c/101"
COLLECTION_PATH = "/services/data/v62.0/composite/sobjects/Lead/HubSpot_Contact_ID__c"

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
Factory = Callable[..., SalesforceTarget]


def lead(hubspot_id: str, **fields: Any) -> UpsertRequest:
    return UpsertRequest("lead", hubspot_id, {"LastName": "Lovelace", "Company": "ACME", **fields})


def contact(hubspot_id: str, **fields: Any) -> UpsertRequest:
    return UpsertRequest("contact", hubspot_id, {"LastName": "Hopper", **fields})


def errors(code: str, message: str = "boom", status: int = 400) -> httpx.Response:
    return httpx.Response(status, json=[{"message": message, "errorCode": code, "fields": []}])


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []

    def factory(handler: Handler, **overrides: Any) -> SalesforceTarget:
        hooks = {k: overrides.pop(k) for k in ("on_call", "on_limit_info") if k in overrides}
        settings: dict[str, Any] = {
            "instance_url": INSTANCE,
            "access_token": ACCESS,
            "client_id": "3MVG9client",
            "client_secret": SECRET,
            "refresh_token": REFRESH,
            **overrides,
        }
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        return SalesforceTarget(config=SalesforceConfig(**settings), http=client, **hooks)

    yield factory
    for client in clients:
        await client.aclose()


# -- single upsert -------------------------------------------------------------------------


async def test_upsert_patches_by_external_id_and_201_means_created(make: Factory) -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"id": "00Q5g0000000001", "success": True, "errors": [], "created": True}
        return httpx.Response(201, json=body)

    target = make(handler)
    result = await target.upsert(lead("101", Email="", HubSpot_Contact_ID__c="101"))
    assert result == UpsertResult("00Q5g0000000001", created=True)
    (request,) = seen
    assert request.method == "PATCH"
    assert str(request.url) == INSTANCE + UPSERT_PATH
    assert request.headers["authorization"] == f"Bearer {ACCESS}"
    assert json.loads(request.content) == {"LastName": "Lovelace", "Company": "ACME", "Email": None}


async def test_upsert_reads_created_and_id_from_a_200_body(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = {"id": "00Q5g0000000001", "success": True, "errors": [], "created": False}
        return httpx.Response(200, json=body)

    assert await make(handler).upsert(lead("101")) == UpsertResult("00Q5g0000000001", False)


async def test_upsert_answered_204_looks_up_the_record_id(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            return httpx.Response(204)
        assert request.url.params["fields"] == "Id"
        assert request.url.path == UPSERT_PATH.replace("v62.0", "v45.0")
        return httpx.Response(200, json={"attributes": {"type": "Lead"}, "Id": "00Q5g0000000007"})

    target = make(handler, api_version="v45.0")
    assert await target.upsert(lead("101")) == UpsertResult("00Q5g0000000007", False)


@pytest.mark.parametrize(
    ("response", "kind", "code"),
    [
        (
            errors("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]"),
            PermanentError,
            "REQUIRED_FIELD_MISSING",
        ),
        (
            errors("FIELD_CUSTOM_VALIDATION_EXCEPTION"),
            PermanentError,
            "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        ),
        (errors("INVALID_FIELD"), PermanentError, "INVALID_FIELD"),
        (errors("DUPLICATES_DETECTED"), PermanentError, "DUPLICATES_DETECTED"),
        (errors("UNABLE_TO_LOCK_ROW"), TransientError, "UNABLE_TO_LOCK_ROW"),
        (errors("NOT_FOUND", status=404), PermanentError, "NOT_FOUND"),
        (errors("REQUEST_LIMIT_EXCEEDED", status=403), RateLimited, "REQUEST_LIMIT_EXCEEDED"),
        (errors("INSUFFICIENT_ACCESS", status=403), PermanentError, "INSUFFICIENT_ACCESS"),
        (errors("UNKNOWN_EXCEPTION", status=500), TransientError, "UNKNOWN_EXCEPTION"),
        (httpx.Response(503, text="<html>Maintenance</html>"), TransientError, "http_503"),
        (httpx.Response(400, text="not json"), PermanentError, "http_400"),
    ],
)
async def test_error_answers_map_onto_the_error_tree(
    make: Factory, response: httpx.Response, kind: type[UpstreamError], code: str
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return response

    with pytest.raises(UpstreamError) as caught:
        await make(handler).upsert(lead("101"))
    assert type(caught.value) is kind
    assert caught.value.code == code
    if kind is RateLimited:
        assert isinstance(caught.value, RateLimited)
        assert caught.value.retry_after is None


async def test_error_message_keeps_salesforce_message_and_fields(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = [{"message": "Bad value", "errorCode": "INVALID_FIELD", "fields": ["Email"]}]
        return httpx.Response(400, json=body)

    with pytest.raises(PermanentError) as caught:
        await make(handler).upsert(lead("101"))
    assert caught.value.message == "Bad value (fields: Email)"


async def test_300_is_permanent_multiple_choices_naming_the_matches(make: Factory) -> None:
    urls = [
        "/services/data/v62.0/sobjects/Lead/00Q5g0000000001",
        "/services/data/v62.0/sobjects/Lead/00Q5g0000000002",
    ]

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(300, json=urls)

    with pytest.raises(PermanentError) as caught:
        await make(handler).upsert(lead("101"))
    assert caught.value.code == "MULTIPLE_CHOICES"
    assert "HubSpot_Contact_ID__c=101 matched 2 Lead records" in caught.value.message
    assert urls[1] in caught.value.message


@pytest.mark.parametrize(
    ("error", "code"),
    [(httpx.ReadTimeout("slow"), "timeout"), (httpx.ConnectError("refused"), "connection_error")],
)
async def test_timeouts_and_network_errors_are_transient(
    make: Factory, error: Exception, code: str
) -> None:
    calls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(TransientError) as caught:
        await make(handler, on_call=calls.append).upsert(lead("101"))
    assert type(caught.value) is TransientError
    assert caught.value.code == code
    assert calls == ["error"]


# -- tokens ---------------------------------------------------------------------------------


def token_answer(token: str, instance: str = INSTANCE) -> httpx.Response:
    return httpx.Response(200, json={"access_token": token, "instance_url": instance})


async def test_401_refreshes_once_and_retries_on_the_new_instance(make: Factory) -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if str(request.url) == TOKEN_URL:
            return token_answer("00Dnew!token", "https://acme2.my.salesforce.com")
        if request.headers["authorization"] != "Bearer 00Dnew!token":
            return errors("INVALID_SESSION_ID", "Session expired or invalid", 401)
        return httpx.Response(201, json={"id": "00Q1", "success": True, "created": True})

    target = make(handler)
    assert await target.upsert(lead("101")) == UpsertResult("00Q1", True)
    assert [r.url.host for r in seen] == [
        "acme.my.salesforce.com",
        "login.salesforce.com",
        "acme2.my.salesforce.com",
    ]
    form = parse_qs(seen[1].content.decode())
    assert form == {
        "grant_type": ["refresh_token"],
        "client_id": ["3MVG9client"],
        "client_secret": [SECRET],
        "refresh_token": [REFRESH],
    }
    assert target.token_refreshes == 1


async def test_401_without_refresh_settings_is_retried_and_says_why(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return errors("INVALID_SESSION_ID", "Session expired or invalid", 401)

    target = make(handler, client_id=None, client_secret=None, refresh_token=None)
    with pytest.raises(AuthExpired) as caught:
        await target.upsert(lead("101"))
    assert caught.value.code == "INVALID_SESSION_ID"
    assert "no refresh token is configured" in caught.value.message


async def test_401_again_with_the_refreshed_token_is_auth_expired(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            return token_answer("00Dnew!token")
        return errors("INVALID_SESSION_ID", "Session expired or invalid", 401)

    with pytest.raises(AuthExpired) as caught:
        await make(handler).upsert(lead("101"))
    assert caught.value.code == "INVALID_SESSION_ID"


async def test_refused_refresh_token_is_permanent_with_the_oauth_error(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            body = {"error": "invalid_grant", "error_description": "expired access/refresh token"}
            return httpx.Response(400, json=body)
        return errors("INVALID_SESSION_ID", "Session expired or invalid", 401)

    with pytest.raises(PermanentError) as caught:
        await make(handler).upsert(lead("101"))
    assert caught.value.code == "invalid_grant"
    assert "expired access/refresh token" in caught.value.message


async def test_failing_token_endpoint_is_transient(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            return httpx.Response(503)
        return errors("INVALID_SESSION_ID", "Session expired or invalid", 401)

    with pytest.raises(TransientError) as caught:
        await make(handler).upsert(lead("101"))
    assert caught.value.code == "http_503"


async def test_only_refresh_settings_fetch_a_token_and_instance_on_first_use(
    make: Factory,
) -> None:
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if str(request.url) == TOKEN_URL:
            return token_answer("00Dfirst!token")
        assert request.headers["authorization"] == "Bearer 00Dfirst!token"
        return httpx.Response(201, json={"id": "00Q1", "success": True, "created": True})

    target = make(handler, instance_url=None, access_token=None)
    await target.upsert(lead("101"))
    await target.upsert(lead("102"))
    assert seen == [TOKEN_URL, INSTANCE + UPSERT_PATH, INSTANCE + UPSERT_PATH.replace("101", "102")]


async def test_no_credentials_at_all_is_permanent(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no call expected")

    target = make(
        handler, access_token=None, client_id=None, client_secret=None, refresh_token=None
    )
    with pytest.raises(PermanentError) as caught:
        await target.upsert(lead("101"))
    assert caught.value.code == "NO_CREDENTIALS"


async def test_concurrent_401s_share_one_refresh(make: Factory) -> None:
    token_calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal token_calls
        if str(request.url) == TOKEN_URL:
            token_calls += 1
            await asyncio.sleep(0.05)
            return token_answer(f"00Dnew!{token_calls}")
        await asyncio.sleep(0.01)
        if request.headers["authorization"] == f"Bearer {ACCESS}":
            return errors("INVALID_SESSION_ID", "Session expired or invalid", 401)
        return httpx.Response(200, json={"id": "00Q1", "success": True, "created": False})

    target = make(handler)
    results = await asyncio.gather(*(target.upsert(lead(str(n))) for n in range(25)))
    assert len(results) == 25
    assert token_calls == 1
    assert target.token_refreshes == 1


# -- batches ------------------------------------------------------------------------------


async def test_collection_upsert_sends_typed_records_and_maps_each_result(make: Factory) -> None:
    seen: list[Any] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "PATCH"
        assert request.url.path == COLLECTION_PATH
        seen.append(json.loads(request.content))
        return httpx.Response(
            200,
            json=[
                {"id": "00Q1", "success": True, "errors": [], "created": True},
                {"id": "00Q2", "success": True, "errors": [], "created": False},
                {
                    "success": False,
                    "errors": [
                        {"statusCode": "DUPLICATES_DETECTED", "message": "dupe", "fields": []}
                    ],
                },
            ],
        )

    results = await make(handler).upsert_batch(
        [lead("1", Email="a@x.io"), lead("2", Id="00Qx"), lead("3", Company="")]
    )
    assert seen == [
        {
            "allOrNone": False,
            "records": [
                {
                    "attributes": {"type": "Lead"},
                    "HubSpot_Contact_ID__c": "1",
                    "LastName": "Lovelace",
                    "Company": "ACME",
                    "Email": "a@x.io",
                },
                {
                    "attributes": {"type": "Lead"},
                    "HubSpot_Contact_ID__c": "2",
                    "LastName": "Lovelace",
                    "Company": "ACME",
                },
                {
                    "attributes": {"type": "Lead"},
                    "HubSpot_Contact_ID__c": "3",
                    "LastName": "Lovelace",
                    "Company": PLACEHOLDER,
                },
            ],
        }
    ]
    assert results[:2] == [UpsertResult("00Q1", True), UpsertResult("00Q2", False)]
    assert isinstance(results[2], PermanentError)
    assert results[2].code == "DUPLICATES_DETECTED"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("UNABLE_TO_LOCK_ROW", TransientError),
        ("REQUEST_LIMIT_EXCEEDED", RateLimited),
        ("REQUIRED_FIELD_MISSING", PermanentError),
        ("FIELD_CUSTOM_VALIDATION_EXCEPTION", PermanentError),
        ("INVALID_FIELD", PermanentError),
        ("DUPLICATE_VALUE", PermanentError),
        ("DUPLICATES_DETECTED", PermanentError),
    ],
)
async def test_collection_record_errors_are_classified_like_single_calls(
    make: Factory, code: str, kind: type[UpstreamError]
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        failed = {"success": False, "errors": [{"statusCode": code, "message": "m"}]}
        return httpx.Response(200, json=[{"id": "00Q1", "success": True}, failed])

    results = await make(handler).upsert_batch([lead("1"), lead("2")])
    assert results[0] == UpsertResult("00Q1", False)
    assert type(results[1]) is kind
    assert isinstance(results[1], UpstreamError)
    assert results[1].code == code


async def test_batch_groups_by_kind_and_answers_in_request_order(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        records = json.loads(request.content)["records"]
        prefix = "00Q" if request.url.path.endswith("/Lead/HubSpot_Contact_ID__c") else "003"
        return httpx.Response(
            200,
            json=[
                {"id": prefix + r["HubSpot_Contact_ID__c"], "success": True, "created": True}
                for r in records
            ],
        )

    requests = [lead("1"), contact("2"), lead("3"), contact("4"), lead("5")]
    results = await make(handler).upsert_batch(requests)
    assert [r.target_id for r in results if isinstance(r, UpsertResult)] == [
        "00Q1",
        "0032",
        "00Q3",
        "0034",
        "00Q5",
    ]


async def test_batch_takes_at_most_200_records_a_call(make: Factory) -> None:
    sizes: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if "records" not in body:  # the lone remainder goes through the single upsert
            sizes.append(1)
            return httpx.Response(201, json={"id": "00Qx", "success": True, "created": True})
        sizes.append(len(body["records"]))
        return httpx.Response(200, json=[{"id": "00Qx", "success": True}] * len(body["records"]))

    results = await make(handler).upsert_batch([lead(str(n)) for n in range(401)])
    assert len(results) == 401
    assert sorted(sizes) == [1, 200, 200]


async def test_lone_request_uses_the_single_upsert_and_returns_its_record_error(
    make: Factory,
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == UPSERT_PATH
        return errors("FIELD_CUSTOM_VALIDATION_EXCEPTION", "no gmail")

    (result,) = await make(handler).upsert_batch([lead("101")])
    assert isinstance(result, PermanentError)
    assert result.message == "no gmail"


async def test_each_whole_call_error_goes_to_that_calls_records_when_every_call_fails(
    make: Factory,
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return errors("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", 403)

    results = await make(handler).upsert_batch([lead("1"), lead("2"), contact("3"), contact("4")])
    assert all(isinstance(r, RateLimited) for r in results)
    assert results[0] is results[1] and results[2] is results[3]  # one error per call
    assert results[0] is not results[2]


async def test_batch_keeps_results_of_calls_that_worked_when_another_failed(
    make: Factory,
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if "/Contact/" in request.url.path:
            return httpx.Response(503, text="down")
        return httpx.Response(200, json=[{"id": "00Q1", "success": True}] * 2)

    results = await make(handler).upsert_batch([lead("1"), contact("2"), lead("3"), contact("4")])
    assert results[0] == results[2] == UpsertResult("00Q1", False)
    assert isinstance(results[1], TransientError)
    assert results[1] is results[3]


async def test_collection_answer_of_the_wrong_length_is_transient(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[{"id": "00Q1", "success": True}])

    results = await make(handler).upsert_batch([lead("1"), lead("2")])
    assert all(isinstance(r, TransientError) and r.code == "bad_response" for r in results)


async def test_old_api_versions_batch_through_single_upserts(make: Factory) -> None:
    paths: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(201, json={"id": "00Q1", "success": True})

    results = await make(handler, api_version="45.0").upsert_batch([lead("1"), lead("2")])
    assert results == [UpsertResult("00Q1", True)] * 2
    assert all("/v45.0/sobjects/Lead/" in path for path in paths)


# -- delete, limits, counting, concurrency, secrets ---------------------------------------------


async def test_delete_removes_lead_and_contact_and_404_means_none(make: Factory) -> None:
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "DELETE"
        seen.append(request.url.path)
        return (
            httpx.Response(204) if "/Lead/" in request.url.path else errors("NOT_FOUND", status=404)
        )

    assert await make(handler).delete("101") == 1
    assert sorted(seen) == [
        "/services/data/v62.0/sobjects/Contact/HubSpot_Contact_ID__c/101",
        UPSERT_PATH,
    ]


async def test_delete_of_a_key_matching_several_records_is_permanent(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(300, json=["/a", "/b"])

    with pytest.raises(PermanentError) as caught:
        await make(handler).delete("101")
    assert caught.value.code == "MULTIPLE_CHOICES"


async def test_limit_info_header_is_reported_and_kept(make: Factory) -> None:
    reported: list[tuple[int, int]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201,
            json={"id": "00Q1", "success": True},
            headers={"Sforce-Limit-Info": "api-usage=42/15000"},
        )

    target = make(handler, on_limit_info=lambda used, limit: reported.append((used, limit)))
    assert target.api_usage is None
    await target.upsert(lead("1"))
    assert reported == [(42, 15000)]
    assert target.api_usage == (42, 15000)


async def test_each_http_call_is_counted_by_status_class(make: Factory) -> None:
    calls: list[str] = []
    answers = iter(
        [
            errors("INVALID_SESSION_ID", "expired", 401),
            token_answer("00Dnew!t"),
            httpx.Response(201, json={"id": "1", "success": True}),
            errors("INVALID_FIELD"),
            httpx.Response(500),
        ]
    )

    async def handler(request: httpx.Request) -> httpx.Response:
        return next(answers)

    target = make(handler, on_call=calls.append)
    await target.upsert(lead("1"))
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await target.upsert(lead("1"))
    assert calls == ["4xx", "2xx", "2xx", "4xx", "5xx"]


async def test_calls_in_flight_never_exceed_max_concurrency(make: Factory) -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(201, json={"id": "1", "success": True})

    target = make(handler, max_concurrency=3)
    await asyncio.gather(*(target.upsert(lead(str(n))) for n in range(12)))
    assert peak == 3


async def test_secrets_stay_out_of_reprs_and_error_messages(make: Factory) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            description = f"bad token {REFRESH} for secret {SECRET}"
            return httpx.Response(
                400, json={"error": "invalid_grant", "error_description": description}
            )
        return errors("INVALID_SESSION_ID", f"Session {ACCESS} expired", 401)

    target = make(handler)
    with pytest.raises(PermanentError) as caught:
        await target.upsert(lead("1"))
    texts = [str(caught.value), repr(caught.value), repr(target), repr(target.config)]
    texts.append(repr(target._tokens))
    for text in texts:
        for secret in (ACCESS, SECRET, REFRESH):
            assert secret not in text
    assert "[redacted]" in caught.value.message
