"""The Salesforce target against the fake org, over real loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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
from receiver.targets.base import UpsertRequest, UpsertResult
from receiver.targets.salesforce.config import SalesforceConfig
from receiver.targets.salesforce.fields import PLACEHOLDER
from receiver.targets.salesforce.target import SalesforceTarget
from tests.fakes.salesforce import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, FakeSalesforce
from tests.support.servers import running_server

LATENCY_S = 0.15

Factory = Callable[..., SalesforceTarget]


def lead(hubspot_id: str, **fields: Any) -> UpsertRequest:
    return UpsertRequest("lead", hubspot_id, {"LastName": "Lovelace", "Company": "ACME", **fields})


def contact(hubspot_id: str, **fields: Any) -> UpsertRequest:
    return UpsertRequest("contact", hubspot_id, {"LastName": "Hopper", **fields})


@pytest.fixture
def fake() -> FakeSalesforce:
    return FakeSalesforce(latency_s=LATENCY_S)


@pytest.fixture
async def base_url(fake: FakeSalesforce) -> AsyncIterator[str]:
    async with running_server(fake.app) as url:
        yield url


@pytest.fixture
async def make(fake: FakeSalesforce, base_url: str) -> AsyncIterator[Factory]:
    async with httpx.AsyncClient(timeout=10) as http:

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
            return SalesforceTarget(config=SalesforceConfig(**settings), http=http)

        yield factory


async def test_single_upsert_creates_then_updates_the_same_record(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make()
    created = await target.upsert(lead("101", FirstName="Ada", Email="ada@example.com"))
    assert created.created is True
    assert created.target_id.startswith("00Q")
    assert len(created.target_id) == 18

    updated = await target.upsert(lead("101", Email="", Title="CTO"))
    assert updated == UpsertResult(created.target_id, created=False)
    record = fake.record("Lead", "101")
    assert record is not None
    assert record.fields == {
        "HubSpot_Contact_ID__c": "101",
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "Company": "ACME",
        "Email": None,
        "Title": "CTO",
    }
    assert fake.calls["upsert"] == 2
    assert target.api_usage == (2, fake.api_limit)


async def test_upsert_fills_required_fields_salesforce_would_refuse_without(
    fake: FakeSalesforce, make: Factory
) -> None:
    result = await make().upsert(UpsertRequest("lead", "7", {"FirstName": "Ada"}))
    assert result.created is True
    record = fake.record("Lead", "7")
    assert record is not None
    assert record.fields["LastName"] == record.fields["Company"] == PLACEHOLDER


async def test_fake_refuses_a_lead_without_company_like_salesforce(
    fake: FakeSalesforce, base_url: str
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.patch(
            f"{base_url}/services/data/v62.0/sobjects/Lead/HubSpot_Contact_ID__c/8",
            json={"LastName": "Lovelace"},
            headers={"Authorization": f"Bearer {fake.access_token}"},
        )
    assert response.status_code == 400
    assert response.json() == [
        {
            "message": "Required fields are missing: [Company]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["Company"],
        }
    ]


async def test_old_api_version_update_answered_204_still_yields_the_record_id(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make(api_version="v45.0")
    first = await target.upsert(contact("55"))
    second = await target.upsert(contact("55", Title="Admiral"))
    assert first.created is True
    assert second == UpsertResult(first.target_id, created=False)
    assert fake.calls["get"] == 1


async def test_batch_of_450_leads_takes_three_collection_calls(
    fake: FakeSalesforce, make: Factory
) -> None:
    results = await make().upsert_batch([lead(str(n)) for n in range(450)])
    assert fake.calls["collection_upsert"] == 3
    assert fake.calls["upsert"] == 0
    assert all(isinstance(r, UpsertResult) and r.created for r in results)
    assert sorted(len(call.body["records"]) for call in fake.log) == [50, 200, 200]
    assert len({r.target_id for r in results if isinstance(r, UpsertResult)}) == 450
    lead_7 = fake.record("Lead", "7")
    assert lead_7 is not None
    assert results[7] == UpsertResult(lead_7.id, created=True)


async def test_validation_error_fails_only_that_record_in_a_batch(
    fake: FakeSalesforce, make: Factory
) -> None:
    fake.reject("3", "Leads from competitors are not allowed")
    requests = [lead("1"), lead("2"), lead("3"), contact("4"), contact("5")]
    results = await make().upsert_batch(requests)
    failed = results[2]
    assert isinstance(failed, PermanentError)
    assert failed.code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert failed.message == "Leads from competitors are not allowed"
    assert all(isinstance(r, UpsertResult) for i, r in enumerate(results) if i != 2)
    assert fake.record("Lead", "3") is None
    assert fake.record("Contact", "5") is not None


async def test_locked_row_in_a_batch_is_transient_for_that_record_only(
    fake: FakeSalesforce, make: Factory
) -> None:
    fake.locked.add("2")
    results = await make().upsert_batch([contact("1"), contact("2")])
    assert isinstance(results[0], UpsertResult)
    assert type(results[1]) is TransientError
    assert results[1].code == "UNABLE_TO_LOCK_ROW"


async def test_token_revoked_mid_burst_costs_exactly_one_refresh(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make(max_concurrency=10)
    burst = asyncio.gather(*(target.upsert(contact(str(n))) for n in range(30)))
    await asyncio.sleep(LATENCY_S + 0.05)  # the first wave is done, the second in flight
    fake.revoke_token()
    results = await burst
    assert all(isinstance(r, UpsertResult) and r.created for r in results)
    assert len(fake.records) == 30
    assert fake.token_refreshes == 1
    assert target.token_refreshes == 1
    assert sum(1 for call in fake.log if call.kind == "upsert") > 30  # some were retried


async def test_refresh_settings_alone_fetch_token_and_instance_on_first_use(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make(access_token=None, instance_url=None)
    await asyncio.gather(target.upsert(lead("1")), target.upsert(contact("1")))
    assert fake.token_refreshes == 1
    assert fake.record("Lead", "1") is not None
    assert fake.record("Contact", "1") is not None


async def test_expired_token_without_refresh_settings_is_retried_naming_the_missing_refresh(
    fake: FakeSalesforce, make: Factory
) -> None:
    # Retried, not failed: a new token and a restart let the events through.
    target = make(client_id=None, client_secret=None, refresh_token=None)
    fake.revoke_token()
    with pytest.raises(AuthExpired) as caught:
        await target.upsert(lead("1"))
    assert caught.value.code == "INVALID_SESSION_ID"
    assert "no refresh token is configured" in caught.value.message
    assert fake.calls["token"] == 0


async def test_request_limit_exceeded_is_rate_limited_without_retry_after(
    fake: FakeSalesforce, make: Factory
) -> None:
    fake.limit_exceeded = True
    target = make()
    with pytest.raises(RateLimited) as caught:
        await target.upsert(lead("1"))
    assert caught.value.code == "REQUEST_LIMIT_EXCEEDED"
    assert caught.value.retry_after is None
    results = await target.upsert_batch([lead("1"), lead("2")])
    assert all(isinstance(r, RateLimited) for r in results)


@pytest.mark.parametrize(("lead_status", "contact_status"), [(400, 503), (503, 400)])
async def test_each_object_calls_error_stays_with_that_objects_records(
    fake: FakeSalesforce, make: Factory, lead_status: int, contact_status: int
) -> None:
    # A Lead mapping mistake during a Contact outage must not fail the Contacts for good
    # (nor make the Leads retry what cannot succeed).
    fake.failing_objects = {"Lead": lead_status, "Contact": contact_status}
    results = await make().upsert_batch([lead("1"), contact("2"), lead("3"), contact("4")])
    kinds = {400: PermanentError, 503: TransientError}
    assert [type(r) for r in results] == [
        kinds[lead_status],
        kinds[contact_status],
        kinds[lead_status],
        kinds[contact_status],
    ]
    codes = {400: "INVALID_FIELD", 503: "SERVER_UNAVAILABLE"}
    assert [r.code for r in results if isinstance(r, UpstreamError)] == [
        codes[lead_status],
        codes[contact_status],
        codes[lead_status],
        codes[contact_status],
    ]


async def test_unavailable_salesforce_is_transient(fake: FakeSalesforce, make: Factory) -> None:
    fake.unavailable = True
    with pytest.raises(TransientError) as caught:
        await make().upsert(contact("1"))
    assert type(caught.value) is TransientError
    assert caught.value.code == "SERVER_UNAVAILABLE"


async def test_unreachable_salesforce_is_transient(make: Factory) -> None:
    target = make(instance_url="http://127.0.0.1:9")
    with pytest.raises(TransientError) as caught:
        await target.upsert(contact("1"))
    assert caught.value.code == "connection_error"


async def test_delete_removes_both_lead_and_contact(fake: FakeSalesforce, make: Factory) -> None:
    target = make()
    await target.upsert(lead("77"))
    await target.upsert(contact("77"))
    await target.upsert(contact("78"))
    assert await target.delete("77") == 2
    assert fake.record("Lead", "77") is None
    assert fake.record("Contact", "77") is None
    assert fake.record("Contact", "78") is not None
    assert await target.delete("77") == 0


async def test_key_matching_several_records_fails_permanently(
    fake: FakeSalesforce, make: Factory
) -> None:
    fake.duplicates.add(("Contact", "9"))
    with pytest.raises(PermanentError) as caught:
        await make().upsert(contact("9"))
    assert caught.value.code == "MULTIPLE_CHOICES"


async def test_secrets_never_appear_in_error_text(fake: FakeSalesforce, make: Factory) -> None:
    first_token = fake.access_token
    errors: list[UpstreamError] = []

    no_refresh = make(client_id=None, client_secret=None, refresh_token=None)
    fake.revoke_token()
    with pytest.raises(AuthExpired) as expired:
        await no_refresh.upsert(lead("1"))
    errors.append(expired.value)

    bad_refresh = make(refresh_token="not-the-refresh-token")
    with pytest.raises(PermanentError) as caught:
        await bad_refresh.upsert(lead("1"))
    assert caught.value.code == "invalid_grant"
    errors.append(caught.value)

    good = make()
    fake.unavailable = True
    with pytest.raises(TransientError) as transient:
        await good.upsert(lead("1"))
    errors.append(transient.value)

    secrets = (first_token, fake.access_token, CLIENT_SECRET, REFRESH_TOKEN)
    texts = [str(e) for e in errors] + [repr(e) for e in errors]
    texts += [repr(t) for t in (no_refresh, bad_refresh, good)]
    texts += [repr(t.config) for t in (no_refresh, bad_refresh, good)]
    for text in texts:
        for secret in secrets:
            assert secret not in text
