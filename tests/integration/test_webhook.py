"""``POST /webhooks/hubspot`` and the health endpoints, on the real app over loopback HTTP."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import structlog
from hubspot.utils.signature import Signature  # type: ignore[import-untyped]

from receiver.models import EventFilter, StoredEvent
from receiver.ops.logging import StdlibHandler, configure_logging
from receiver.ops.nesting import MAX_EVENT_DEPTH, deeper_than
from receiver.web.app import create_app
from receiver.web.context import AppContext
from tests.conftest import SECRET, build_settings
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

PATH = "/webhooks/hubspot"
PUBLIC_URL = "https://hooks.example.com/webhooks/hubspot"
STATUS_KEYS = {
    "counts",
    "oldest_pending_age_s",
    "last_sync_at",
    "target",
    "lead_stages",
    "contact_stages",
    "version",
    "uptime_s",
}


@dataclass
class Service:
    """A running app: its URLs, an HTTP client and the app context."""

    base_url: str
    http: httpx.AsyncClient
    ctx: AppContext

    @property
    def hook(self) -> str:
        return self.base_url + PATH

    async def send(
        self, events: list[dict[str, Any]] | bytes, secret: str = SECRET, **headers: str
    ) -> httpx.Response:
        body, signed_headers = signed(self.hook, events, secret)
        return await self.http.post(self.hook, content=body, headers={**signed_headers, **headers})

    async def stored(self, state: str | None = None) -> list[StoredEvent]:
        return await self.ctx.store.list_events(EventFilter(state=state), 100_000)


Starter = Callable[..., AbstractAsyncContextManager[Service]]


@pytest.fixture
def start(tmp_path: Path) -> Starter:
    """``async with start(**setting_overrides) as service``: a fresh app on its own DB."""
    counter = iter(range(1000))

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Service]:
        home = tmp_path / f"app{next(counter)}"
        home.mkdir()
        app = create_app(build_settings(home, **overrides))
        async with running_server(app) as base_url, httpx.AsyncClient(timeout=10) as http:
            yield Service(base_url, http, app.state.ctx)

    return run


@pytest.fixture
async def service(start: Starter) -> AsyncIterator[Service]:
    async with start() as svc:
        yield svc


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert isinstance(doc["error"], str) and isinstance(doc["message"], str)
    assert doc["message"]
    if code is not None:
        assert doc["error"] == code


def counts(accepted: int, duplicates: int = 0, invalid: int = 0) -> dict[str, int]:
    return {"accepted": accepted, "duplicates": duplicates, "invalid": invalid}


def event_ids(events: list[StoredEvent]) -> list[Any]:
    return sorted(e.raw["eventId"] for e in events)


def batch(n: int, first_contact: int = 1000) -> list[dict[str, Any]]:
    return [event(first_contact + i, "lead") for i in range(n)]


# -- signatures --------------------------------------------------------------------------


async def test_v3_signed_batch_is_accepted_and_stored(service: Service) -> None:
    events = [event(1, "lead"), event(2, "customer")]
    response = await service.send(events)
    assert response.status_code == 200
    assert response.json() == counts(2)
    assert event_ids(await service.stored()) == sorted(e["eventId"] for e in events)


async def test_v3_signature_from_the_official_sdk_is_accepted(service: Service) -> None:
    body = orjson.dumps([event(3, "lead")])
    ts = str(int(time.time() * 1000))
    sig = Signature.get_signature(
        SECRET, body.decode(), "v3", http_uri=service.hook, http_method="POST", timestamp=ts
    )
    response = await service.http.post(
        service.hook,
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-HubSpot-Signature-v3": sig,
            "X-HubSpot-Request-Timestamp": ts,
        },
    )
    assert response.status_code == 200 and response.json() == counts(1)


async def test_v3_signature_over_the_decoded_query_string_is_accepted(service: Service) -> None:
    # HubSpot signs the URI with the listed escapes decoded; the request keeps them encoded.
    sent = service.hook + "?portal=a%3Ab%40c&note=x%20y"
    signed_uri = service.hook + "?portal=a:b@c&note=x%20y"
    body = orjson.dumps([event(4, "lead")])
    ts = str(int(time.time() * 1000))
    sig = Signature.get_signature(
        SECRET, body.decode(), "v3", http_uri=signed_uri, http_method="POST", timestamp=ts
    )
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": sig,
        "X-HubSpot-Request-Timestamp": ts,
    }
    response = await service.http.post(sent, content=body, headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_v1_and_v2_signatures_from_the_official_sdk_are_accepted(
    service: Service, version: str
) -> None:
    body = orjson.dumps([event(5, "lead"), event(6, "lead")])
    sig = Signature.get_signature(
        SECRET, body.decode(), version, http_uri=service.hook, http_method="POST"
    )
    response = await service.http.post(
        service.hook,
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-HubSpot-Signature": sig,
            "X-HubSpot-Signature-Version": version,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == counts(2)


async def test_v2_signature_for_another_url_is_refused(service: Service) -> None:
    body = orjson.dumps([event(7, "lead")])
    sig = Signature.get_signature(
        SECRET, body.decode(), "v2", http_uri=PUBLIC_URL, http_method="POST"
    )
    response = await service.http.post(
        service.hook,
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-HubSpot-Signature": sig,
            "X-HubSpot-Signature-Version": "v2",
        },
    )
    assert_error(response, 401, "invalid_signature")


@pytest.mark.parametrize(
    "case", ["tampered body", "wrong secret", "stale timestamp", "future timestamp",
             "missing signature", "missing timestamp", "garbage signature"],
)  # fmt: skip
async def test_bad_signature_is_refused_with_401_json_and_nothing_stored(
    service: Service, case: str
) -> None:
    events = [event(8, "lead")]
    now_ms = int(time.time() * 1000)
    secret = "wrong-secret" if case == "wrong secret" else SECRET
    ts = {"stale timestamp": now_ms - 301_000, "future timestamp": now_ms + 301_000}.get(
        case, now_ms
    )
    body, headers = signed(service.hook, events, secret, now_ms=ts)
    if case == "tampered body":
        body = body.replace(b'"lead"', b'"customer"')
    if case == "missing signature":
        del headers["X-HubSpot-Signature-v3"]
    if case == "missing timestamp":
        del headers["X-HubSpot-Request-Timestamp"]
    sent = httpx.Headers(headers)
    if case == "garbage signature":
        sent["X-HubSpot-Signature-v3"] = "é" * 22  # sent as UTF-8: not even ASCII
    response = await service.http.post(service.hook, content=body, headers=sent)
    assert_error(response, 401, "invalid_signature")
    assert SECRET not in response.text
    assert await service.stored() == []


async def test_timestamp_just_inside_the_window_is_accepted(service: Service) -> None:
    body, headers = signed(
        service.hook, [event(9, "lead")], SECRET, now_ms=int(time.time() * 1000) - 290_000
    )
    response = await service.http.post(service.hook, content=body, headers=headers)
    assert response.status_code == 200


async def test_public_url_signature_verifies_when_public_url_is_set(start: Starter) -> None:
    async with start(public_url=PUBLIC_URL) as svc:
        body, headers = signed(PUBLIC_URL, [event(10, "lead")], SECRET)
        response = await svc.http.post(svc.hook, content=body, headers=headers)
        assert response.status_code == 200, response.text
        # A signature for the local URL is now the wrong one.
        local = await svc.send([event(11, "lead")])
        assert_error(local, 401, "invalid_signature")


async def test_public_url_signature_fails_without_public_url(service: Service) -> None:
    body, headers = signed(PUBLIC_URL, [event(12, "lead")], SECRET)
    response = await service.http.post(service.hook, content=body, headers=headers)
    assert_error(response, 401, "invalid_signature")


# -- content type, size, shape -----------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_non_json_content_type_gets_415(service: Service, content_type: str) -> None:
    response = await service.send([event(13, "lead")], **{"Content-Type": content_type})
    assert_error(response, 415)


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.api+json"],
)
async def test_json_content_types_with_parameters_are_accepted(
    service: Service, content_type: str
) -> None:
    response = await service.send([event(14, "lead")], **{"Content-Type": content_type})
    assert response.status_code == 200, response.text


async def test_body_over_max_body_bytes_gets_413_and_the_server_still_serves(
    start: Starter,
) -> None:
    async with start(max_body_bytes=2000) as svc:
        body = orjson.dumps([event(15, "lead", note="x" * 2000)])
        response = await svc.send(body)
        assert_error(response, 413, "payload_too_large")
        assert (await svc.send([event(16, "lead")])).status_code == 200
        assert (await svc.http.get(svc.base_url + "/healthz")).status_code == 200


async def test_body_of_exactly_max_body_bytes_is_accepted(start: Starter) -> None:
    async with start(max_body_bytes=2000) as svc:
        body = orjson.dumps([event(17, "lead")])
        body = body[:-2] + b"," + b'"pad":"' + b"x" * (2000 - len(body) - 9) + b'"}]'
        assert len(body) == 2000
        response = await svc.send(body)
        assert response.status_code == 200, response.text


async def test_chunked_body_over_the_limit_gets_413_without_content_length(
    start: Starter,
) -> None:
    async with start(max_body_bytes=2000) as svc:
        body, headers = signed(svc.hook, [event(18, "lead", note="y" * 4000)], SECRET)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 500):
                yield body[i : i + 500]

        response = await svc.http.post(svc.hook, content=chunks(), headers=headers)
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "payload_too_large")
        assert (await svc.send([event(19, "lead")])).status_code == 200


async def test_endless_chunked_body_is_cut_off_without_being_read_to_the_end(
    start: Starter,
) -> None:
    async with start(max_body_bytes=4096) as svc:
        total_chunks = 4096  # 256 MiB if the server read it all
        sent = 0

        async def endless() -> AsyncIterator[bytes]:
            nonlocal sent
            yield b'[{"objectId": 1, "pad": "'
            for _ in range(total_chunks):
                sent += 1
                yield b"z" * 65536

        _, headers = signed(svc.hook, b"unused", SECRET)
        try:
            response = await svc.http.post(svc.hook, content=endless(), headers=headers)
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the server closed the connection: also a refusal
        else:
            assert_error(response, 413, "payload_too_large")
        assert sent < total_chunks
        assert (await svc.http.get(svc.base_url + "/healthz")).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"objectId": 1}',
        b"42",
        b"null",
        b"[1]",
        b'[{"objectId": 1}, "x"]',
        b"[[]]",
        b"not json",
        b"",
    ],
)
async def test_signed_body_that_is_not_an_array_of_objects_gets_400(
    service: Service, body: bytes
) -> None:
    response = await service.send(body)
    assert_error(response, 400, "bad_request")
    assert await service.stored() == []


async def test_a_declared_size_past_int64_is_refused_at_once_not_awaited(
    service: Service,
) -> None:
    port = int(service.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /webhooks/hubspot HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 9999999999999999999\r\n\r\n[]"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 413")


async def test_an_event_nested_past_the_bound_is_invalid_and_does_not_cost_its_batch(
    service: Service,
) -> None:
    # HubSpot's events are flat. A deep one (orjson reads 1,024 levels but writes only
    # 254, and answers nest the payload deeper still) is stored invalid, cut to the bound.
    def with_extra(ev: dict[str, Any], depth: int) -> bytes:
        return orjson.dumps(ev)[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}"

    for depth in (MAX_EVENT_DEPTH, 300, 1_020):
        body = b"[" + orjson.dumps(event(1, "lead")) + b"," + with_extra(event(2, "lead"), depth)
        response = await service.send(body + b"]")
        assert response.status_code == 200 and response.json() == counts(1, invalid=1), depth
    invalid = [e for e in await service.stored() if e.state == "invalid"]
    assert len(invalid) == 3
    for stored in invalid:
        assert f"more than {MAX_EVENT_DEPTH} levels" in (stored.last_error_message or "")
        assert not deeper_than(stored.raw, MAX_EVENT_DEPTH)
        assert stored.raw["objectId"] == 2

    # Exactly the bound, the event object included, is still an event.
    body = b"[" + with_extra(event(3, "lead"), MAX_EVENT_DEPTH - 1) + b"]"
    assert (await service.send(body)).json() == counts(1)


async def test_a_batch_the_store_refuses_gets_503_and_still_counts_as_received(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(events: Any, now: float) -> Any:
        raise OSError("disk full")

    def received() -> float | None:
        return service.ctx.metrics.registry.get_sample_value("stagesync_events_received_total")

    monkeypatch.setattr(service.ctx.store, "ingest", refuse)
    before = received() or 0.0
    response = await service.send([event(1, "lead"), event(2, "lead")])
    assert_error(response, 503, "storage_unavailable")
    assert received() == before + 2


async def test_error_messages_are_sentences_that_keep_their_acronyms(service: Service) -> None:
    # str.capitalize() had lowered the rest: "The body is not valid json."
    assert (await service.send(b"not json")).json()["message"] == "The body is not valid JSON."
    nested = (await service.send(b"[1]")).json()["message"]
    assert nested == "Every element of the array must be a JSON object."


async def test_empty_array_is_accepted_with_zero_counts(service: Service) -> None:
    response = await service.send([])
    assert response.status_code == 200 and response.json() == counts(0)


async def test_sender_disconnecting_mid_body_is_not_logged_as_an_error(
    service: Service,
) -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        port = int(service.base_url.rsplit(":", 1)[1])
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /webhooks/hubspot HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{"
        )
        await writer.drain()
        await asyncio.sleep(0.1)  # the endpoint is now waiting for the rest of the body
        writer.close()
        await writer.wait_closed()
        assert (await service.http.get(service.base_url + "/healthz")).status_code == 200
        await asyncio.sleep(0.1)
    finally:
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, StdlibHandler)]:
            root.removeHandler(handler)
    assert '"level": "error"' not in out.getvalue()
    assert await service.stored() == []


# -- check order -------------------------------------------------------------------------


async def test_oversize_body_with_wrong_content_type_gets_413(start: Starter) -> None:
    async with start(max_body_bytes=100) as svc:
        response = await svc.send(b"[" + b" " * 200 + b"]", **{"Content-Type": "text/plain"})
        assert_error(response, 413)


async def test_wrong_content_type_with_bad_signature_gets_415(service: Service) -> None:
    response = await service.send(
        [event(20, "lead")], secret="wrong", **{"Content-Type": "text/plain"}
    )
    assert_error(response, 415)


async def test_bad_signature_with_bad_json_gets_401(service: Service) -> None:
    response = await service.send(b"{not json", secret="wrong")
    assert_error(response, 401)


async def test_unsigned_request_gets_401_before_its_json_is_looked_at(service: Service) -> None:
    response = await service.http.post(
        service.hook, content=b"[1,2,3]", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 401)


# -- invalid events and duplicates -------------------------------------------------------


async def test_malformed_event_in_a_good_batch_is_stored_invalid_with_its_error(
    service: Service,
) -> None:
    bad = {"objectId": "not-a-number", "eventId": 1, "subscriptionType": "contact.creation"}
    response = await service.send([event(21, "lead"), bad, event(22, "lead")])
    assert response.status_code == 200
    assert response.json() == counts(2, invalid=1)
    [stored] = await service.stored("invalid")
    assert stored.raw == bad
    assert stored.last_error_message is not None and "objectId" in stored.last_error_message
    assert len(await service.stored()) == 3


async def test_same_batch_twice_is_stored_once_and_counted_as_duplicates(
    service: Service,
) -> None:
    events = batch(5)
    first = await service.send(events)
    assert first.json() == counts(5)
    retried = [{**e, "attemptNumber": 1} for e in events]
    second = await service.send(retried)
    assert second.status_code == 200
    assert second.json() == counts(0, duplicates=5)
    assert event_ids(await service.stored()) == sorted(e["eventId"] for e in events)


async def test_duplicates_inside_one_batch_count_the_first_copy_as_accepted(
    service: Service,
) -> None:
    a, b = event(30, "lead"), event(31, "customer")
    response = await service.send([a, {**a, "attemptNumber": 2}, b, a])
    assert response.json() == counts(2, duplicates=2)
    assert len(await service.stored()) == 2


async def test_repeated_invalid_event_is_stored_once(service: Service) -> None:
    bad = {"objectId": None, "eventId": 5}
    await service.send([bad])
    response = await service.send([bad, event(32, "lead")])
    assert response.status_code == 200
    assert response.json()["accepted"] == 1
    assert len(await service.stored("invalid")) == 1


async def test_signed_event_with_a_huge_object_id_is_stored_invalid_not_a_503(
    service: Service,
) -> None:
    response = await service.send([event(2**63, "lead"), event(33, "lead")])
    assert response.status_code == 200
    assert response.json() == counts(1, invalid=1)


async def test_batch_of_150_events_is_accepted(service: Service) -> None:
    events = batch(150)
    response = await service.send(events)
    assert response.json() == counts(150)
    assert len(await service.stored()) == 150


# -- concurrency and group commit --------------------------------------------------------


async def test_concurrent_requests_each_get_their_counts_and_share_commits(
    service: Service,
) -> None:
    commits: list[int] = []
    service.ctx.store.add_commit_listener(lambda: commits.append(1))  # once per commit
    batches = [batch(10, first_contact=10_000 + 100 * i) for i in range(50)]
    # A shared duplicate in every batch: exactly one request may count it as accepted.
    shared = event(99_999, "lead")
    responses = await asyncio.gather(*(service.send([*b, shared]) for b in batches))

    assert all(r.status_code == 200 for r in responses)
    docs = [r.json() for r in responses]
    assert sum(d["accepted"] for d in docs) == 501
    assert sum(d["duplicates"] for d in docs) == 49
    assert all(d["accepted"] >= 10 for d in docs)
    stored = await service.stored()
    assert event_ids(stored) == sorted(
        [e["eventId"] for b in batches for e in b] + [shared["eventId"]]
    )
    assert 1 <= len(commits) < len(batches)


# -- health, readiness, status -----------------------------------------------------------


async def test_healthz_answers_ok(service: Service) -> None:
    response = await service.http.get(service.base_url + "/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_answers_200_when_the_database_and_dispatcher_work(
    service: Service,
) -> None:
    response = await service.http.get(service.base_url + "/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["database"] == "ok"


async def test_readyz_answers_503_naming_the_database_when_it_fails(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(service.ctx.store, "ping", broken)
    response = await service.http.get(service.base_url + "/readyz")
    assert_error(response, 503, "not_ready")
    doc = response.json()
    assert doc["checks"]["database"].startswith("failing")
    assert "database" in doc["message"]


async def test_status_has_the_spec_shape_and_counts(start: Starter) -> None:
    async with start(lead_stages="lead,1234567", contact_stages="customer") as svc:
        bad = {"objectId": "x"}
        await svc.send([event(40, "lead"), bad])
        response = await svc.http.get(svc.base_url + "/status")
        assert response.status_code == 200
        doc = response.json()
        assert set(doc) >= STATUS_KEYS
        assert set(doc["counts"]) >= {
            "pending",
            "retrying",
            "synced",
            "skipped",
            "failed",
            "invalid",
        }
        assert sum(doc["counts"].values()) == 2
        assert doc["counts"]["invalid"] == 1
        assert doc["lead_stages"] == ["lead", "1234567"]
        assert doc["contact_stages"] == ["customer"]
        assert doc["target"] == "dry-run"
        assert isinstance(doc["version"], str) and doc["version"]
        assert isinstance(doc["uptime_s"], int | float) and doc["uptime_s"] >= 0
        pending = doc["oldest_pending_age_s"]
        assert pending is None or (isinstance(pending, int | float) and pending >= 0)


async def test_status_contains_no_secret(start: Starter) -> None:
    secrets = {
        "admin_token": "admin-token-do-not-show-1234",
        "hubspot_access_token": "pat-na1-do-not-show-5678",
    }
    async with start(**secrets, hubspot_api_url="http://127.0.0.1:9") as svc:
        text = (await svc.http.get(svc.base_url + "/status")).text
        for value in (SECRET, *secrets.values()):
            assert value not in text


async def test_unknown_path_and_wrong_method_answer_json_errors(service: Service) -> None:
    assert_error(await service.http.get(service.base_url + "/nope"), 404)
    assert_error(await service.http.get(service.hook), 405)
