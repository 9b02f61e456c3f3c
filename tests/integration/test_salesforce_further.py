"""The Salesforce target's org-level behaviour against the fake org, over loopback HTTP:
the API budget, converted Leads, ``PROMOTION=convert`` and Bulk API 2.0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from receiver.errors import PermanentError, RateLimited
from receiver.targets.base import UpsertRequest, UpsertResult
from receiver.targets.salesforce.budget import BUDGET_CODE
from receiver.targets.salesforce.config import SalesforceConfig
from receiver.targets.salesforce.target import SalesforceTarget
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


# -- a Lead converted by a person ----------------------------------------------------------


def lead_with_contact_fields(hubspot_id: str, **fields: Any) -> UpsertRequest:
    contact_fields = {"LastName": "Lovelace", **fields}
    return UpsertRequest(
        "lead",
        hubspot_id,
        {"LastName": "Lovelace", "Company": "ACME", **fields},
        contact_fields=contact_fields,
    )


async def test_updates_of_converted_leads_go_to_their_contacts_with_one_query_per_batch(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make()
    ids = [str(n) for n in range(1, 6)]
    await target.upsert_batch([lead(n) for n in ids])
    made = {n: fake.convert_lead(n) for n in ("2", "4")}
    queries = len(fake.queries)

    results = await target.upsert_batch([lead_with_contact_fields(n, Title=f"T{n}") for n in ids])

    assert len(fake.queries) == queries + 1
    assert "IN ('2', '4')" in fake.queries[-1]
    for n in ("1", "3", "5"):
        assert results[int(n) - 1] == UpsertResult(fake.records[("Lead", n)].id, False)
    for n, contact in made.items():
        assert results[int(n) - 1] == UpsertResult(contact.id, False, kind="contact")
        assert fake.record("Contact", n) is contact  # it now carries the external id
        assert contact.fields["Title"] == f"T{n}"
        assert contact.fields["HubSpot_Contact_ID__c"] == n
        assert "Company" not in contact.fields
    assert fake.calls["update_by_id"] == 1


async def test_a_single_converted_lead_is_followed_too(fake: FakeSalesforce, make: Factory) -> None:
    target = make()
    await target.upsert(lead("7"))
    contact = fake.convert_lead("7")
    result = await target.upsert(lead_with_contact_fields("7", Email="ada@example.com"))
    assert result == UpsertResult(contact.id, False, kind="contact")
    assert contact.fields["Email"] == "ada@example.com"


async def test_a_contact_refusing_the_external_id_keeps_its_own_error(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make()
    await target.upsert(lead("8"))
    fake.convert_lead("8")
    await target.upsert(UpsertRequest("contact", "8", {"LastName": "Other"}))  # key taken
    results = await target.upsert_batch([lead_with_contact_fields("8")])
    assert isinstance(results[0], PermanentError)
    assert results[0].code == "DUPLICATE_VALUE"


# -- PROMOTION=convert ------------------------------------------------------------------------


def promoted(hubspot_id: str, **fields: Any) -> UpsertRequest:
    return UpsertRequest(
        "contact", hubspot_id, {"LastName": "Lovelace", **fields}, may_create=True, convert=True
    )


async def test_convert_turns_the_lead_into_the_contact_that_gets_the_external_id(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make()
    await target.upsert_batch([lead("11", Email="a@example.com"), lead("12")])
    lead_11 = fake.record("Lead", "11")
    assert lead_11 is not None

    results = await target.upsert_batch(
        [promoted("11", Title="CEO"), promoted("12", Title="CTO"), promoted("13")]
    )

    contact_11 = fake.record("Contact", "11")
    assert contact_11 is not None and lead_11.fields["IsConverted"] is True
    assert lead_11.fields["ConvertedContactId"] == contact_11.id
    assert contact_11.fields["Email"] == "a@example.com"  # carried over by the conversion
    assert contact_11.fields["Title"] == "CEO"
    assert results[0] == UpsertResult(contact_11.id, False, kind="contact")
    assert isinstance(results[1], UpsertResult) and results[1].kind == "contact"
    created = fake.record("Contact", "13")  # no Lead: a plain upsert
    assert created is not None and results[2] == UpsertResult(created.id, True)
    assert fake.calls["soap"] == 1
    # one Lead lookup, one read of the converted status
    assert [q.split(" FROM ")[1].split()[0] for q in fake.queries] == ["Lead", "LeadStatus"]
    assert fake.unkeyed == {}


async def test_configured_converted_status_is_used_without_asking_the_org(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make(converted_status="Qualified")
    fake.converted_status = "Qualified"
    await target.upsert(lead("21"))
    await target.upsert(promoted("21"))
    assert all("LeadStatus" not in q for q in fake.queries)
    assert fake.record("Contact", "21") is not None


async def test_a_refused_conversion_is_classified_per_record(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make(converted_status="Wrong")
    await target.upsert_batch([lead("31"), lead("32")])
    results = await target.upsert_batch([promoted("31"), promoted("32")])
    assert all(isinstance(r, PermanentError) and r.code == "INVALID_STATUS" for r in results)
    assert fake.record("Contact", "31") is None


async def test_an_expired_session_on_the_soap_call_is_refreshed_once(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make()
    await target.upsert(lead("41"))
    await target.conversions.converted_status()
    fake.revoke_token()
    converted = await target.conversions.convert([fake.records[("Lead", "41")].id])
    assert fake.token_refreshes == 1
    assert not isinstance(converted[0], PermanentError)
    assert fake.calls["soap"] == 2


# -- Bulk API 2.0 ---------------------------------------------------------------------------


def fast_polls(target: SalesforceTarget) -> None:
    target.bulk.first_poll_s = 0.01
    target.bulk.max_poll_s = 0.05


async def test_bulk_upsert_runs_one_job_per_object_and_reads_results_per_record(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make()
    fast_polls(target)
    await target.upsert(lead("3", Title="Before"))
    fake.reject("7", "Leads from competitors are not allowed")
    requests = [lead(str(n), Title=f"T{n}") for n in range(1, 11)]
    requests.append(UpsertRequest("contact", "50", {"LastName": "Hopper", "Email": ""}))

    results = await target.bulk_upsert(requests)

    assert fake.calls["bulk_create"] == 2  # a Lead job and a Contact job
    assert fake.calls["collection_upsert"] == 0
    for n in range(1, 11):
        result = results[n - 1]
        if n == 7:
            assert isinstance(result, PermanentError)
            assert result.code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
            assert result.message.startswith("Leads from competitors are not allowed")
            continue
        record = fake.record("Lead", str(n))
        assert record is not None and record.fields["Title"] == f"T{n}"
        assert result == UpsertResult(record.id, created=n != 3)
    contact = fake.record("Contact", "50")
    assert contact is not None and contact.fields["Email"] is None  # "#N/A" clears it
    assert results[10] == UpsertResult(contact.id, True)
    assert [job.state for job in target.bulk.jobs] == ["JobComplete", "JobComplete"]


async def test_bulk_upsert_polls_with_backoff_until_the_job_is_done(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    target.bulk.sleep = sleep
    target.bulk.first_poll_s, target.bulk.max_poll_s = 1.0, 4.0
    fake.bulk.polls_before_done = 4
    results = await target.bulk_upsert([lead("1"), lead("2")])
    assert all(isinstance(r, UpsertResult) for r in results)
    assert slept == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert fake.calls["bulk_poll"] == 5


async def test_bulk_csv_keeps_commas_quotes_and_newlines_intact(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make()
    fast_polls(target)
    tricky = 'ACME, "Ltd"\nDivision'
    await target.bulk_upsert([lead("1", Company=tricky), lead("2")])
    record = fake.record("Lead", "1")
    assert record is not None and record.fields["Company"] == tricky


async def test_a_failed_job_fails_its_unprocessed_records(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make()
    fast_polls(target)
    fake.bulk.fail_next_job = True
    results = await target.bulk_upsert([lead("1"), lead("2")])
    assert all(isinstance(r, PermanentError) and r.code == "BULK_JOB_FAILED" for r in results)


async def test_bulk_upsert_follows_converted_leads_with_one_query(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make()
    fast_polls(target)
    await target.upsert_batch([lead(str(n)) for n in range(1, 6)])
    contact = fake.convert_lead("4")
    results = await target.bulk_upsert([lead_with_contact_fields(str(n)) for n in range(1, 6)])
    assert results[3] == UpsertResult(contact.id, False, kind="contact")
    assert len(fake.queries) == 1


async def test_bulk_upsert_is_held_back_by_the_api_budget(
    fake: FakeSalesforce, make: Factory
) -> None:
    target = make(api_budget=0.5)
    fast_polls(target)
    fake.set_usage(900, 1_000)
    await target.upsert(lead("1"))
    calls = len(fake.log)
    results = await target.bulk_upsert([lead("2"), lead("3")])
    assert all(isinstance(r, RateLimited) for r in results)
    assert len(fake.log) == calls
