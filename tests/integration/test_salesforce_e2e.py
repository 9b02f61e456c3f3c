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

from receiver.models import OPEN_STATES, EventFilter, StoredEvent
from receiver.store.base import EventStore
from receiver.targets.salesforce.fields import PLACEHOLDER
from receiver.web.app import create_app
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

    async def settled(self, object_ids: Iterable[int], within: float = WAIT_S) -> None:
        """Wait until no event of these contacts is pending or retrying."""
        wanted = set(object_ids)

        async def done() -> bool:
            for object_id in wanted:
                events = await self.events_of(object_id)
                if not events or any(e.state in OPEN_STATES for e in events):
                    return False
            return True

        await wait_until(done, within)

    async def all_closed(self, total: int, within: float = WAIT_S) -> dict[str, int]:
        """Wait until ``total`` events are stored and none is open; counts per state."""

        async def counts() -> dict[str, int]:
            by_reason = await self.store.counts()
            return {state: sum(n.values()) for state, n in by_reason.items()}

        last: dict[str, int] = {}

        async def done() -> bool:
            last.clear()
            last.update(await counts())
            return sum(last.values()) >= total and not any(last.get(s) for s in OPEN_STATES)

        await wait_until(done, within, lambda: (last, dict(self.salesforce.calls)))
        return {state: n for state, n in (await counts()).items() if n}


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    within: float = WAIT_S,
    describe: Callable[[], object] = lambda: "",
) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds, saying ``describe()``."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {within} s: {describe()}")
        await asyncio.sleep(0.02)


async def wait_for_calls(fake: FakeSalesforce, count: int) -> None:
    """Wait until the fake Salesforce has answered ``count`` calls."""

    async def seen() -> bool:
        return len(fake.log) >= count

    await wait_until(seen, WAIT_S, lambda: dict(fake.calls))


ServiceFactory = Callable[..., Any]


@pytest.fixture
def start(tmp_path: Path) -> ServiceFactory:
    """``async with start(**settings) as service``: fakes first, then the service."""

    @asynccontextmanager
    async def factory(
        *,
        contacts: dict[int, dict[str, str]] | None = None,
        refresh: bool = True,
        token: bool = True,
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
                "hubspot_access_token": DEFAULT_TOKEN if token else "",
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

    return factory


def person(stage: str, **properties: str) -> dict[str, str]:
    return {"lifecyclestage": stage, **properties}


# -- where a contact lands --------------------------------------------------------------


async def test_lead_stage_contact_ends_as_a_lead_with_mapped_fields_and_placeholders(
    start: ServiceFactory,
) -> None:
    contacts = {101: person("lead", firstname="Ada", email="ada@example.com", jobtitle="")}
    async with start(contacts=contacts) as service:
        answer = await service.send([event(101, "lead")])
        assert answer == {"accepted": 1, "duplicates": 0, "invalid": 0}
        await service.settled([101])

        record = service.salesforce.record("Lead", "101")
        assert record is not None
        assert record.fields == {
            "HubSpot_Contact_ID__c": "101",
            "FirstName": "Ada",
            "LastName": PLACEHOLDER,
            "Company": PLACEHOLDER,
            "Email": "ada@example.com",
            "Phone": None,
            "Title": None,
        }
        assert service.salesforce.record("Contact", "101") is None
        stored = await service.only_event(101)
        assert (stored.state, stored.stage, stored.attempts) == ("synced", "lead", 1)
        assert (stored.target_kind, stored.target_id) == ("lead", record.id)
        state = await service.store.get_contact(101)
        assert (state.kind, state.target_id) == ("lead", record.id)
        assert service.salesforce.calls["upsert"] == 1  # a lone event: one single upsert


async def test_contact_stage_ends_as_a_contact_without_company(start: ServiceFactory) -> None:
    contacts = {102: person("customer", firstname="Grace", lastname="Hopper", company="Navy")}
    async with start(contacts=contacts) as service:
        await service.send([event(102, "customer")])
        await service.settled([102])

        record = service.salesforce.record("Contact", "102")
        assert record is not None
        assert record.fields == {
            "HubSpot_Contact_ID__c": "102",
            "FirstName": "Grace",
            "LastName": "Hopper",
            "Email": None,
            "Phone": None,
            "Title": None,
        }
        assert service.salesforce.record("Lead", "102") is None
        stored = await service.only_event(102)
        assert (stored.state, stored.target_kind, stored.target_id) == (
            "synced",
            "contact",
            record.id,
        )


async def test_mapping_overrides_send_typed_values_and_drop_removed_fields(
    start: ServiceFactory,
) -> None:
    mapping = (
        '{"lead": {"Title": "", "Newsletter__c": "newsletter", '
        '"Last_Call_Date__c": "last_call", "Employees__c": "employees"}}'
    )
    contacts = {
        103: person(
            "lead",
            lastname="Lovelace",
            company="ACME",
            jobtitle="CTO",
            newsletter="true",
            last_call="1714564800000",
            employees="0042",
        )
    }
    async with start(contacts=contacts, mapping=mapping) as service:
        await service.send([event(103, "lead")])
        await service.settled([103])

        record = service.salesforce.record("Lead", "103")
        assert record is not None
        assert "Title" not in record.fields
        assert record.fields["Newsletter__c"] is True
        assert record.fields["Last_Call_Date__c"] == "2024-05-01"
        assert record.fields["Employees__c"] == "0042"
        assert "newsletter" in service.hubspot.bodies[0]["properties"]


async def test_without_a_token_an_update_keeps_the_last_name_and_company_salesforce_holds(
    start: ServiceFactory,
) -> None:
    def change(name: str, value: str) -> dict[str, Any]:
        return event(301, property_name=name, property_value=value, occurred_at=later_ms())

    async with start(token=False) as service:
        stage = event(301, "lead", occurred_at=later_ms())
        await service.send([stage, change("lastname", "Lovelace"), change("company", "ACME")])
        await service.settled([301])
        lead = service.salesforce.record("Lead", "301")
        assert lead is not None and (lead.fields["LastName"], lead.fields["Company"]) == (
            "Lovelace",
            "ACME",
        )

        await service.send([change("firstname", "Ada")])
        await service.settled([301])

        after = service.salesforce.record("Lead", "301")
        assert after is not None and after.id == lead.id
        assert (after.fields["FirstName"], after.fields["LastName"]) == ("Ada", "Lovelace")
        assert after.fields["Company"] == "ACME"
        assert service.salesforce.log[-1].body == {"FirstName": "Ada"}
        assert {e.state for e in await service.events_of(301)} == {"synced", "skipped"}


async def test_promotion_creates_the_contact_and_leaves_the_lead(start: ServiceFactory) -> None:
    contacts = {201: person("lead", firstname="Ada", lastname="Lovelace", company="ACME")}
    async with start(contacts=contacts) as service:
        await service.send([event(201, "lead", occurred_at=later_ms())])
        await service.settled([201])
        lead = service.salesforce.record("Lead", "201")
        assert lead is not None
        lead_before = (lead.id, dict(lead.fields))

        service.hubspot.contacts[201]["lifecyclestage"] = "customer"
        await service.send([event(201, "customer", occurred_at=later_ms())])
        await service.settled([201])

        contact = service.salesforce.record("Contact", "201")
        assert contact is not None
        assert contact.fields["LastName"] == "Lovelace"
        assert "Company" not in contact.fields
        lead_after = service.salesforce.record("Lead", "201")
        assert lead_after is not None
        assert (lead_after.id, lead_after.fields) == lead_before
        newest, oldest = await service.events_of(201)
        assert (oldest.state, oldest.target_kind, oldest.target_id) == ("synced", "lead", lead.id)
        assert (newest.state, newest.target_kind, newest.target_id) == (
            "synced",
            "contact",
            contact.id,
        )
        state = await service.store.get_contact(201)
        assert (state.kind, state.target_id) == ("contact", contact.id)


async def test_status_shows_salesforce_api_usage(start: ServiceFactory) -> None:
    async with start(contacts={104: person("lead")}) as service:
        await service.send([event(104, "lead")])
        await service.settled([104])
        response = await service.http.get(f"{service.url}/status")
        status = response.json()
        assert status["target"] == "salesforce"
        assert status["target_api"] == {
            "used": service.salesforce.api_used,
            "limit": service.salesforce.api_limit,
            "paused": False,
        }
        assert service.salesforce.access_token not in response.text


# -- tokens ------------------------------------------------------------------------------


async def test_token_expiry_mid_burst_is_refreshed_once_and_nothing_is_lost(
    start: ServiceFactory,
) -> None:
    ids = list(range(1, 601))
    contacts = {n: person("lead", lastname=f"Doe{n}", company="ACME") for n in ids}
    batches = [[event(n, "lead") for n in ids[i : i + 100]] for i in range(0, 600, 100)]
    async with start(contacts=contacts, latency_s=LATENCY_S) as service:
        fake = service.salesforce
        await asyncio.gather(*(service.send(batch) for batch in batches[:3]))
        await wait_for_calls(fake, 1)
        old = f"Bearer {fake.access_token}"
        fake.revoke_token()
        revoked_at = len(fake.log)
        await asyncio.gather(*(service.send(batch) for batch in batches[3:]))

        counts = await service.all_closed(600)
        assert counts == {"synced": 600}
        assert len(fake.records) == 600
        assert fake.token_refreshes == 1
        refused = [c for c in fake.log[revoked_at:] if c.authorization == old]
        assert refused, "no call met the revoked token"
        synced = await service.store.list_events(EventFilter(state="synced"), 1000)
        assert {e.attempts for e in synced} == {1}  # the refresh cost no attempt


async def test_expired_token_without_refresh_settings_fails_with_a_clear_reason(
    start: ServiceFactory,
) -> None:
    async with start(contacts={701: person("lead")}, refresh=False) as service:
        service.salesforce.revoke_token()
        await service.send([event(701, "lead")])
        await service.settled([701])

        stored = await service.only_event(701)
        assert stored.state == "failed"
        assert stored.last_error_code == "INVALID_SESSION_ID"
        assert "no refresh token is configured" in (stored.last_error_message or "")
        assert service.salesforce.calls["token"] == 0


# -- failures --------------------------------------------------------------------------


async def test_validation_error_fails_only_its_own_record(start: ServiceFactory) -> None:
    ids = [301, 302, 303, 304, 305]
    contacts = {n: person("lead", lastname=f"Doe{n}", company="ACME") for n in ids}
    async with start(contacts=contacts) as service:
        service.salesforce.reject("303", "Leads from competitors are not allowed")
        await service.send([event(n, "lead") for n in ids])
        await service.settled(ids)

        failed = await service.only_event(303)
        assert failed.state == "failed"
        assert failed.last_error_code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        assert failed.last_error_message == "Leads from competitors are not allowed"
        assert failed.attempts == 1
        assert service.salesforce.record("Lead", "303") is None
        for n in (301, 302, 304, 305):
            assert (await service.only_event(n)).state == "synced"
            assert service.salesforce.record("Lead", str(n)) is not None
        assert service.salesforce.calls["collection_upsert"] == 1


async def test_replaying_a_failed_event_from_the_cli_after_the_fix_ends_synced(
    start: ServiceFactory,
) -> None:
    async with start(contacts={401: person("lead", lastname="Doe", company="ACME")}) as service:
        service.salesforce.reject("401", "Email domain is not allowed")
        await service.send([event(401, "lead")])
        await service.settled([401])
        failed = await service.only_event(401)
        assert failed.state == "failed"

        service.salesforce.rejected.clear()  # the admin fixed the validation rule
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "replay",
            str(failed.id),
            env={**os.environ, **service.settings_env},
            cwd=Path(__file__).parents[2],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert "replayed 1 event(s)" in out.decode()

        await service.settled([401])
        replayed = await service.only_event(401)
        record = service.salesforce.record("Lead", "401")
        assert record is not None
        assert (replayed.state, replayed.target_id) == ("synced", record.id)
        history = await service.store.history(failed.id)
        assert [h.outcome for h in history] == ["failed", "synced"]


async def test_outage_of_503s_is_retried_to_success(start: ServiceFactory) -> None:
    # Stands for a 30 s outage against the default 5 s base: with a 0.2 s base and a
    # 1 s cap, 2 s of 503s take several backed-off attempts, as 30 s would.
    outage_s = 2.0
    ids = [501, 502, 503]
    contacts = {n: person("customer", lastname=f"Doe{n}") for n in ids}
    async with start(contacts=contacts) as service:
        fake = service.salesforce
        fake.unavailable = True
        began = time.monotonic()
        await service.send([event(n, "customer") for n in ids])

        async def each_failed_twice() -> bool:
            return all([(await service.only_event(n)).attempts >= 2 for n in ids])

        # Held until every contact has failed twice, however slow a shared machine is.
        await wait_until(each_failed_twice, WAIT_S, lambda: dict(fake.calls))
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - began)))
        fake.unavailable = False
        await service.settled(ids)

        assert len(fake.records) == 3
        for n in ids:
            stored = await service.only_event(n)
            assert stored.state == "synced"
            assert stored.attempts >= 3
            history = await service.store.history(stored.id)
            assert [h.outcome for h in history] == ["retry"] * (stored.attempts - 1) + ["synced"]
            assert {h.error_code for h in history[:-1]} == {"SERVER_UNAVAILABLE"}


async def test_request_limit_exceeded_delays_without_using_attempts(
    start: ServiceFactory,
) -> None:
    ids = [601, 602]
    contacts = {n: person("lead", lastname="Doe", company="ACME") for n in ids}
    async with start(contacts=contacts, max_attempts=2) as service:
        fake = service.salesforce
        fake.limit_exceeded = True
        await service.send([event(n, "lead") for n in ids])
        await wait_for_calls(fake, 4)  # more refusals than the two attempts allowed
        waiting = await service.only_event(601)
        assert (waiting.state, waiting.attempts) == ("retrying", 0)
        assert waiting.last_error_code == "REQUEST_LIMIT_EXCEEDED"
        fake.limit_exceeded = False
        await service.settled(ids)

        for n in ids:
            stored = await service.only_event(n)
            assert (stored.state, stored.attempts) == ("synced", 1)
            assert [h.outcome for h in await service.store.history(stored.id)] == ["synced"]


async def test_privacy_deletion_removes_both_lead_and_contact(start: ServiceFactory) -> None:
    contacts = {801: person("lead", lastname="Doe", company="ACME")}
    async with start(contacts=contacts) as service:
        await service.send([event(801, "lead", occurred_at=later_ms())])
        await service.settled([801])
        service.hubspot.contacts[801]["lifecyclestage"] = "customer"
        await service.send([event(801, "customer", occurred_at=later_ms())])
        await service.settled([801])
        assert len(service.salesforce.records) == 2

        await service.send(
            [event(801, subscription_type="contact.privacyDeletion", occurred_at=later_ms())]
        )
        await service.settled([801])
        assert service.salesforce.records == {}
        newest = (await service.events_of(801))[0]
        assert newest.state == "synced"


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
        assert counts == {"synced": 1000}
        assert len(fake.records) == 1000
        # Four calls of 100 start at once (one per worker, one claim each); what piles
        # up meanwhile goes 200 a call: 7 when claims keep up, 10 at most (one a claim).
        assert 5 <= calls <= 10, f"{calls} calls ({dict(fake.calls)}) in {elapsed:.2f} s"


# -- API budget --------------------------------------------------------------------------


async def test_api_budget_pauses_salesforce_calls_and_resumes_without_using_attempts(
    start: ServiceFactory,
) -> None:
    contacts = {n: person("lead", lastname="Doe", company="ACME") for n in (901, 902)}
    overrides = {"salesforce_api_budget": 0.8, "salesforce_api_budget_recheck_s": 0.5}
    async with start(contacts=contacts, **overrides) as service:
        fake = service.salesforce
        fake.set_usage(13_000, 15_000)
        await service.send([event(901, "lead")])
        await service.settled([901])  # its answer reported 13,001 of 15,000: above 80%
        status = (await service.http.get(f"{service.url}/status")).json()
        assert status["target_api"] == {"used": 13_001, "limit": 15_000, "paused": True}
        metrics = (await service.http.get(f"{service.url}/metrics")).text
        assert f"stagesync_target_api_usage_ratio {13_001 / 15_000}" in metrics

        await service.send([event(902, "lead")])

        async def held_back() -> bool:
            stored = await service.only_event(902)
            return stored.last_error_code == "API_BUDGET" and fake.calls["limits"] >= 2

        await wait_until(held_back)  # rechecked twice, still above: no upsert meanwhile
        waiting = await service.only_event(902)
        assert (waiting.state, waiting.attempts) == ("retrying", 0)
        assert fake.record("Lead", "902") is None
        assert fake.calls["upsert"] + fake.calls["collection_upsert"] == 1

        fake.set_usage(2_000)  # the rolling 24 hours moved on
        await service.settled([902])
        stored = await service.only_event(902)
        assert (stored.state, stored.attempts) == ("synced", 1)
        assert [h.outcome for h in await service.store.history(stored.id)] == ["synced"]
        status = (await service.http.get(f"{service.url}/status")).json()
        assert status["target_api"]["paused"] is False


# -- converted Leads ---------------------------------------------------------------------


async def test_promotion_with_convert_converts_the_lead_into_the_synced_contact(
    start: ServiceFactory,
) -> None:
    contacts = {1001: person("lead", lastname="Doe", company="ACME", email="doe@example.com")}
    async with start(contacts=contacts, promotion="convert") as service:
        fake = service.salesforce
        await service.send([event(1001, "lead", occurred_at=later_ms())])
        await service.settled([1001])
        lead = fake.record("Lead", "1001")
        assert lead is not None

        service.hubspot.contacts[1001].update(lifecyclestage="customer", jobtitle="CFO")
        await service.send([event(1001, "customer", occurred_at=later_ms())])
        await service.settled([1001])

        contact = fake.record("Contact", "1001")
        assert contact is not None
        assert lead.fields["IsConverted"] is True
        assert lead.fields["ConvertedContactId"] == contact.id
        assert contact.fields["Title"] == "CFO"
        assert contact.fields["Email"] == "doe@example.com"
        newest = (await service.events_of(1001))[0]
        assert (newest.state, newest.target_kind, newest.target_id) == (
            "synced",
            "contact",
            contact.id,
        )
        state = await service.store.get_contact(1001)
        assert state is not None and (state.kind, state.target_id) == ("contact", contact.id)
        assert fake.calls["soap"] == 1


async def test_promotion_with_convert_and_no_lead_upserts_the_contact(
    start: ServiceFactory,
) -> None:
    contacts = {1002: person("customer", lastname="Roe")}
    async with start(contacts=contacts, promotion="convert") as service:
        fake = service.salesforce
        await service.send([event(1002, "customer")])
        await service.settled([1002])

        contact = fake.record("Contact", "1002")
        assert contact is not None and contact.fields["LastName"] == "Roe"
        stored = await service.only_event(1002)
        assert (stored.state, stored.target_kind, stored.target_id) == (
            "synced",
            "contact",
            contact.id,
        )
        assert fake.calls["soap"] == 0
        assert len(fake.queries) == 1  # the Lead lookup that found none
        assert fake.record("Lead", "1002") is None


async def test_leads_converted_by_a_person_are_followed_with_one_query_per_batch(
    start: ServiceFactory,
) -> None:
    ids = list(range(1101, 1111))
    contacts = {n: person("lead", lastname=f"Doe{n}", company="ACME") for n in ids}
    async with start(contacts=contacts) as service:
        fake = service.salesforce
        await service.send([event(n, "lead", occurred_at=later_ms()) for n in ids])
        await service.settled(ids)
        converted = {n: fake.convert_lead(str(n)) for n in (1102, 1105, 1109)}

        for n in ids:
            service.hubspot.contacts[n]["jobtitle"] = "Engineer"
        upserts_before = fake.calls["collection_upsert"] + fake.calls["upsert"]
        await service.send([event(n, "lead", occurred_at=later_ms()) for n in ids])
        await service.settled(ids)

        batches = fake.calls["collection_upsert"] + fake.calls["upsert"] - upserts_before
        assert len(fake.queries) <= batches  # never one query per record
        assert len(fake.queries) >= 1
        for n, contact in converted.items():
            newest = (await service.events_of(n))[0]
            assert (newest.state, newest.target_kind, newest.target_id) == (
                "synced",
                "contact",
                contact.id,
            )
            assert contact.fields["HubSpot_Contact_ID__c"] == str(n)
            assert contact.fields["Title"] == "Engineer"
            state = await service.store.get_contact(n)
            assert state is not None and state.kind == "contact"
        for n in set(ids) - set(converted):
            assert (await service.events_of(n))[0].target_kind == "lead"

        # Later events go straight to the Contact: no refusal, no lookup.
        queries = len(fake.queries)
        service.hubspot.contacts[1102]["jobtitle"] = "Manager"
        await service.send([event(1102, "lead", occurred_at=later_ms())])
        await service.settled([1102])
        assert len(fake.queries) == queries
        assert converted[1102].fields["Title"] == "Manager"
        newest = (await service.events_of(1102))[0]
        assert (newest.state, newest.target_kind) == ("synced", "contact")


# -- Bulk API 2.0 -------------------------------------------------------------------------


async def test_backlog_of_5000_contacts_goes_through_bulk_jobs_with_3_rejected(
    start: ServiceFactory,
) -> None:
    # The backlog forms as it does in production: while the API budget holds calls back,
    # 5,000 events pile up; once the org's use falls, they are ready at once.
    ids = range(20_001, 25_001)
    rejected = {"20007", "22500", "24999"}
    contacts = {n: person("lead", lastname=f"Doe{n}", company="ACME") for n in ids}
    contacts[20_000] = person("lead", lastname="First", company="ACME")
    overrides = {
        "salesforce_bulk_threshold": 2000,
        "salesforce_api_budget": 0.8,
        "salesforce_api_budget_recheck_s": 2,
    }
    async with start(contacts=contacts, **overrides) as service:
        fake = service.salesforce
        for hubspot_id in rejected:
            fake.reject(hubspot_id, "Leads from competitors are not allowed")
        fake.set_usage(14_000, 15_000)
        await service.send([event(20_000, "lead")])
        await service.settled([20_000])  # the answer showed the org above 80%: paused
        batches = [[event(n, "lead") for n in ids[i : i + 100]] for i in range(0, 5000, 100)]
        await asyncio.gather(*(service.send(batch) for batch in batches))

        async def all_held_back() -> bool:
            counts = await service.store.counts()
            return sum(counts.get("retrying", {}).values()) == 5000

        await wait_until(all_held_back, 60)
        assert fake.calls["collection_upsert"] + fake.calls["upsert"] == 1
        fake.set_usage(1_000)
        counts = await service.all_closed(5001, within=90)

        assert counts == {"synced": 4998, "failed": 3}
        assert len(fake.records) == 4998
        assert fake.calls["bulk_create"] >= 1
        bulk_records = sum(len(job.succeeded) + len(job.failed) for job in fake.bulk.jobs.values())
        assert bulk_records >= 4000, dict(fake.calls)  # two groups of 2,000 at least
        for hubspot_id in rejected:
            failed = await service.only_event(int(hubspot_id))
            assert (failed.state, failed.last_error_code) == (
                "failed",
                "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            )
            assert failed.attempts == 1
        synced = await service.only_event(20_001)
        record = fake.record("Lead", "20001")
        assert record is not None and (synced.state, synced.attempts) == ("synced", 1)
        assert (synced.target_kind, synced.target_id) == ("lead", record.id)
        # A job costs create, upload, close, a poll or two and two result reads: 2,000
        # records and more in 7 or 8 calls, against 10 or more collection calls.
        bulk_calls = sum(n for kind, n in fake.calls.items() if kind.startswith("bulk_"))
        assert bulk_calls <= 8 * len(fake.bulk.jobs), dict(fake.calls)
