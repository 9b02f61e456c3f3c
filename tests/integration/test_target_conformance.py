"""The target conformance suite: every real target, against its own fake, over loopback.

Each test runs once per target in :data:`tests.support.target_adapters.ADAPTERS`, most
of them through the whole service (signed webhooks in, the fake HubSpot for current
properties, the real store on SQLite and PostgreSQL). A target is done when it passes
every test here; adding one is a fake and an adapter.

Retries use ``RETRY_BASE_S=0.2`` and ``RETRY_MAX_S=1`` and the HTTP client a 1 s
timeout, so outages, timeouts and rate limits resolve in about a second.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.cli.main import main
from receiver.models import OPEN_STATES, EventFilter, StoredEvent
from receiver.ops.metrics import Metrics
from receiver.store.base import EventStore
from receiver.targets.base import UpsertRequest
from receiver.targets.factory import make_target
from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.fakes.hubspot import DEFAULT_TOKEN, FakeHubSpot
from tests.fakes.memory_store import InMemoryStore
from tests.integration.conftest import Backend
from tests.support.servers import running_server
from tests.support.target_adapters import ADAPTERS, Adapter
from tests.support.webhooks import event, signed

WAIT_S = 15.0
_clock_ms = itertools.count(int(time.time() * 1000))


def later_ms() -> int:
    """A strictly increasing ``occurredAt``."""
    return next(_clock_ms)


def person(stage: str, **properties: str) -> dict[str, str]:
    return {"lifecyclestage": stage, **properties}


FULL = {
    "firstname": "Ada",
    "lastname": "Lovelace",
    "email": "ada@example.com",
    "phone": "+44 20 7946 0000",
    "company": "Analytical Engines",
    "jobtitle": "Programmer",
}


@pytest.fixture(params=list(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> Adapter:
    """Each real target in turn, with a fresh fake."""
    return ADAPTERS[request.param]()


@dataclass
class Service:
    """The running service, its fake HubSpot and the target's adapter."""

    url: str
    store: EventStore
    hubspot: FakeHubSpot
    crm: Adapter
    http: httpx.AsyncClient

    async def send(self, *events: dict[str, Any]) -> None:
        url = f"{self.url}/webhooks/hubspot"
        body, headers = signed(url, list(events), SECRET)
        response = await self.http.post(url, content=body, headers=headers)
        assert response.status_code == 200, response.text

    async def events_of(self, object_id: int) -> list[StoredEvent]:
        return await self.store.list_events(EventFilter(object_id=object_id), 100)

    async def latest(self, object_id: int) -> StoredEvent:
        return (await self.events_of(object_id))[0]

    async def settled(self, *object_ids: int) -> None:
        async def done() -> bool:
            for object_id in object_ids:
                events = await self.events_of(object_id)
                if not events or any(e.state in OPEN_STATES for e in events):
                    return False
            return True

        await wait_until(done)

    async def until(self, object_id: int, check: Callable[[StoredEvent], bool]) -> StoredEvent:
        found: list[StoredEvent] = []

        async def done() -> bool:
            events = await self.events_of(object_id)
            found[:] = events[:1]
            return bool(events) and check(events[0])

        await wait_until(done, lambda: found)
        return found[0]


async def wait_until(
    check: Callable[[], Awaitable[bool]], describe: Callable[[], object] = lambda: ""
) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {WAIT_S} s: {describe()}")
        await asyncio.sleep(0.02)


ServiceFactory = Callable[..., Any]


@pytest.fixture
def start(adapter: Adapter, database: Backend, tmp_path: Path) -> ServiceFactory:
    """``async with start(contacts, **settings) as service``: fakes first, then the service."""

    @asynccontextmanager
    async def factory(
        contacts: dict[int, dict[str, str]], **overrides: Any
    ) -> AsyncIterator[Service]:
        hubspot = FakeHubSpot(contacts=dict(contacts))
        async with AsyncExitStack() as stack:
            hubspot_url = await stack.enter_async_context(running_server(hubspot.app))
            await adapter.serve(stack)
            settings = build_settings(
                tmp_path,
                target=adapter.name,
                database_url=database.url,
                hubspot_access_token=DEFAULT_TOKEN,
                hubspot_api_url=hubspot_url,
                retry_base_s=0.2,
                retry_max_s=1,
                **adapter.env(),
                **overrides,
            )
            upstream = await stack.enter_async_context(httpx.AsyncClient(timeout=1.0))
            app = create_app(settings, http=upstream)
            url = await stack.enter_async_context(running_server(app))
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
            yield Service(url, app.state.ctx.store, hubspot, adapter, client)

    return factory


# -- where a contact lands, with which fields ---------------------------------------------


async def test_lead_stage_becomes_a_lead_and_contact_stage_a_contact_with_the_default_mapping(
    start: ServiceFactory, adapter: Adapter
) -> None:
    contacts = {101: person("lead", **FULL), 102: person("customer", **FULL)}
    async with start(contacts) as service:
        await service.send(event(101, "lead"), event(102, "customer"))
        await service.settled(101, 102)

        for object_id, kind, other in ((101, "lead", "contact"), (102, "contact", "lead")):
            record = adapter.record(kind, object_id)  # type: ignore[arg-type]
            assert record is not None, (kind, object_id)
            for target_field, prop in adapter.default[kind].items():  # type: ignore[index]
                assert record[target_field] == contacts[object_id][prop], target_field
            for target_field, value in adapter.extra(kind, str(object_id)).items():  # type: ignore[arg-type]
                assert record[target_field] == value
            assert adapter.record(other, object_id) is None  # type: ignore[arg-type]
            stored = await service.latest(object_id)
            assert (stored.state, stored.target_kind, stored.attempts) == ("synced", kind, 1)
            assert stored.target_id


async def test_default_mappings_are_the_ones_the_spec_lists(
    adapter: Adapter, tmp_path: Path
) -> None:
    async with httpx.AsyncClient() as http:
        settings = _settings(adapter, tmp_path)
        target = make_target(
            settings.target,
            settings.target_settings,
            store=InMemoryStore(),
            http=http,
            metrics=Metrics(),
        )
        for kind in ("lead", "contact"):
            assert target.default_mapping(kind) == adapter.default[kind]  # type: ignore[arg-type,index]


async def test_mapping_overrides_add_fields_and_empty_values_remove_defaults(
    start: ServiceFactory, adapter: Adapter
) -> None:
    mapping = f'{{"lead": {{"{adapter.email_field}": "", "{adapter.custom_field}": "colour"}}}}'
    contacts = {103: person("lead", **FULL, colour="teal")}
    async with start(contacts, mapping=mapping) as service:
        await service.send(event(103, "lead"))
        await service.settled(103)

        record = adapter.record("lead", 103)
        assert record is not None
        assert record[adapter.custom_field] == "teal"
        assert adapter.email_field not in record
        assert (await service.latest(103)).state == "synced"


async def test_promotion_creates_the_contact_and_leaves_the_lead(
    start: ServiceFactory, adapter: Adapter
) -> None:
    async with start({104: person("lead", **FULL)}) as service:
        await service.send(event(104, "lead", occurred_at=later_ms()))
        await service.settled(104)
        lead_before = adapter.record("lead", 104)

        service.hubspot.contacts[104]["lifecyclestage"] = "customer"
        await service.send(event(104, "customer", occurred_at=later_ms()))
        await service.settled(104)

        contact = adapter.record("contact", 104)
        assert contact is not None
        assert contact[_key_of(adapter, "lastname")] == "Lovelace"
        assert adapter.record("lead", 104) == lead_before
        newest = await service.latest(104)
        assert (newest.state, newest.target_kind) == ("synced", "contact")


# -- deletions ------------------------------------------------------------------------------


async def test_privacy_deletion_removes_both_the_lead_and_the_contact(
    start: ServiceFactory, adapter: Adapter
) -> None:
    async with start({105: person("lead", **FULL)}) as service:
        await service.send(event(105, "lead", occurred_at=later_ms()))
        await service.settled(105)
        service.hubspot.contacts[105]["lifecyclestage"] = "customer"
        await service.send(event(105, "customer", occurred_at=later_ms()))
        await service.settled(105)
        assert adapter.record("lead", 105) is not None
        assert adapter.record("contact", 105) is not None

        await service.send(
            event(105, subscription_type="contact.privacyDeletion", occurred_at=later_ms())
        )
        await service.settled(105)

        assert adapter.record("lead", 105) is None
        assert adapter.record("contact", 105) is None
        assert (await service.latest(105)).state == "synced"


async def test_deleting_a_contact_the_crm_never_had_counts_as_done(
    start: ServiceFactory, adapter: Adapter
) -> None:
    async with start({}) as service:
        await service.send(event(106, subscription_type="contact.privacyDeletion"))
        await service.settled(106)
        stored = await service.latest(106)
        assert (stored.state, stored.attempts, stored.last_error_code) == ("synced", 1, None)


# -- tokens, limits, outages ----------------------------------------------------------------


async def test_an_expired_token_is_refreshed_once_inside_the_attempt(
    start: ServiceFactory, adapter: Adapter
) -> None:
    if not adapter.has_token:
        pytest.skip(f"the {adapter.name} target uses no access token")
    contacts = {n: person("lead", **FULL) for n in range(110, 120)}
    async with start(contacts) as service:
        await service.send(event(110, "lead", occurred_at=later_ms()))
        await service.settled(110)
        before = adapter.token_requests()

        adapter.expire_tokens()
        await service.send(*(event(n, "lead", occurred_at=later_ms()) for n in range(110, 120)))
        await service.settled(*range(110, 120))

        assert adapter.token_requests() == before + 1
        for n in range(110, 120):
            stored = await service.latest(n)
            assert (stored.state, stored.attempts) == ("synced", 1)
            assert adapter.record("lead", n) is not None


async def test_a_rate_limit_delays_without_using_an_attempt(
    start: ServiceFactory, adapter: Adapter
) -> None:
    async with start({121: person("lead", **FULL)}) as service:
        adapter.set_failure("rate_limit")
        await service.send(event(121, "lead"))
        limited = await service.until(121, lambda e: e.last_error_code is not None)
        assert (limited.state, limited.attempts) == ("retrying", 0)
        assert limited.last_error_code == adapter.rate_code

        adapter.set_failure(None)
        await service.settled(121)
        stored = await service.latest(121)
        assert (stored.state, stored.attempts) == ("synced", 1)
        assert [h.outcome for h in await service.store.history(stored.id)] == ["synced"]
        if adapter.retry_after_s is not None:  # the next attempt waited for Retry-After
            assert stored.updated_at - limited.updated_at >= adapter.retry_after_s - 0.01


@pytest.mark.parametrize(("mode", "code"), [("unavailable", None), ("hang", "timeout")])
async def test_5xx_answers_and_timeouts_are_retried_to_success(
    start: ServiceFactory, adapter: Adapter, mode: str, code: str | None
) -> None:
    async with start({122: person("lead", **FULL)}) as service:
        adapter.set_failure(mode)
        await service.send(event(122, "lead"))
        failed = await service.until(122, lambda e: e.attempts >= 1)
        assert failed.state == "retrying"
        assert failed.last_error_code == (code or adapter.unavailable_code)

        adapter.set_failure(None)
        await service.settled(122)
        stored = await service.latest(122)
        assert stored.state == "synced"
        outcomes = [h.outcome for h in await service.store.history(stored.id)]
        assert outcomes[0] == "retry" and outcomes[-1] == "synced"
        assert adapter.record("lead", 122) is not None


async def test_a_rejected_record_fails_with_the_crms_code_and_message_and_can_be_replayed(
    start: ServiceFactory, adapter: Adapter
) -> None:
    contacts = {123: person("lead", **FULL), 124: person("lead", **FULL)}
    async with start(contacts) as service:
        adapter.reject(123)
        await service.send(event(123, "lead"), event(124, "lead"))
        await service.settled(123, 124)

        failed = await service.latest(123)
        assert (failed.state, failed.attempts) == ("failed", 1)
        assert failed.last_error_code == adapter.reject_code
        assert adapter.reject_message in (failed.last_error_message or "")
        assert (await service.latest(124)).state == "synced"  # its neighbour went through
        assert adapter.record("lead", 123) is None

        adapter.accept(123)
        assert await service.store.replay([failed.id], time.time()) == []
        await service.until(123, lambda e: e.state == "synced")
        assert adapter.record("lead", 123) is not None
        history = await service.store.history(failed.id)
        assert [h.outcome for h in history] == ["failed", "synced"]


# -- batching and configuration ---------------------------------------------------------


def _settings(adapter: Adapter, tmp_path: Path, **overrides: Any) -> Any:
    return build_settings(tmp_path, target=adapter.name, **adapter.env(), **overrides)


async def test_a_burst_is_batched_up_to_the_targets_batch_size(
    adapter: Adapter, tmp_path: Path
) -> None:
    count = adapter.batch_size + 3
    async with AsyncExitStack() as stack:
        await adapter.serve(stack)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        settings = _settings(adapter, tmp_path)
        target = make_target(
            settings.target,
            settings.target_settings,
            store=InMemoryStore(),
            http=http,
            metrics=Metrics(),
        )
        assert target.batch_size == adapter.batch_size
        requests = [
            UpsertRequest("lead", str(n), _mapped(adapter, FULL)) for n in range(1000, 1000 + count)
        ]
        results = await target.upsert_batch(requests)

    assert all(not isinstance(r, Exception) for r in results), results
    sizes = adapter.upsert_sizes()
    if adapter.records_per_call == 1:
        assert sizes == [1] * count
    else:
        assert sorted(sizes) == [3, adapter.batch_size]
    assert all(adapter.record("lead", n) is not None for n in range(1000, 1000 + count))


def test_check_config_names_each_missing_key_in_one_line(
    adapter: Adapter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STAGESYNC_HUBSPOT_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("STAGESYNC_TARGET", adapter.name)
    assert main(["check-config"]) == 1
    lines = capsys.readouterr().err.splitlines()
    for key in adapter.required_keys:
        assert len([line for line in lines if line.strip().startswith(f"{key}:")]) == 1, lines


def _key_of(adapter: Adapter, prop: str) -> str:
    """The target field the contact default maps ``prop`` from."""
    return next(f for f, p in adapter.default["contact"].items() if p == prop)


def _mapped(adapter: Adapter, properties: dict[str, str]) -> dict[str, str]:
    return {f: properties[p] for f, p in adapter.default["lead"].items() if p in properties}
