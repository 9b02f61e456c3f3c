"""The admin API over real HTTP: auth, listing and paging, one event, replays, audit lines."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from structlog.testing import capture_logs

from receiver.errors import PermanentError, TransientError
from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.support.clock import Clock
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

TOKEN = "admin-token-for-tests-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EVENT_KEYS = {
    "id", "state", "reason", "object_id", "subscription_type", "stage",
    "attempts", "attempts_since_replay", "last_error", "received_at", "updated_at",
    "target_kind", "target_id", "raw",
}  # fmt: skip
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
WAIT_S = 5.0


class Service:
    """A running app, its base URL and an HTTP client."""

    def __init__(self, app: Starlette, base: str, http: httpx.AsyncClient, clock: Clock) -> None:
        self.app = app
        self.base = base
        self.http = http
        self.clock = clock

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    async def send(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        url = f"{self.base}/webhooks/hubspot"
        body, headers = signed(url, events, SECRET, now_ms=int(self.clock() * 1000))
        answer = await self.http.post(url, content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(self.base + path, headers=AUTH, **kwargs)

    async def post(
        self, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        return await self.http.post(self.base + path, headers={**AUTH, **(headers or {})}, **kw)

    async def event(self, event_id: int) -> dict[str, Any]:
        answer = await self.get(f"/admin/events/{event_id}")
        assert answer.status_code == 200, answer.text
        doc: dict[str, Any] = answer.json()
        return doc

    async def wait_state(self, event_id: int, *states: str) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            doc = await self.event(event_id)
            if doc["state"] in states:
                return doc
            assert asyncio.get_running_loop().time() < deadline, f"event stuck: {doc}"
            await asyncio.sleep(0.02)

    async def wait_closed(self) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while (await self.http.get(f"{self.base}/status")).json()["counts"]["pending"]:
            assert asyncio.get_running_loop().time() < deadline, "events stay pending"
            await asyncio.sleep(0.02)


@asynccontextmanager
async def service(tmp_path: Path, **overrides: Any) -> AsyncIterator[Service]:
    settings = build_settings(tmp_path, **{"admin_token": TOKEN, **overrides})
    clock = Clock(T0)
    app = create_app(settings, clock=clock)
    async with running_server(app) as base, httpx.AsyncClient(timeout=10) as http:
        yield Service(app, base, http, clock)


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Service]:
    async with service(tmp_path) as s:
        yield s


@contextmanager
def target_answers(
    svc: Service, make: Callable[[list[Any]], Awaitable[list[Any]]]
) -> Iterator[None]:
    """Replace the target's batch upsert (which single upserts go through too)."""
    target = svc.ctx.dispatcher.target
    target.upsert_batch = make
    try:
        yield
    finally:
        del target.upsert_batch  # back to the class's own method


def failing(code: str = "INVALID_EMAIL_ADDRESS") -> Callable[[list[Any]], Awaitable[list[Any]]]:
    async def upsert_batch(requests: list[Any]) -> list[Any]:
        return [PermanentError(code, "Email: invalid email address") for _ in requests]

    return upsert_batch


async def make_failed(svc: Service, *object_ids: int) -> list[int]:
    """One failed lead event per contact; returns their ids."""
    before = await svc.get("/admin/events", params={"limit": 1})
    top = before.json()["events"][0]["id"] if before.json()["events"] else 0
    with target_answers(svc, failing()):
        await svc.send([event(i, "lead") for i in object_ids])
        ids = list(range(top + 1, top + 1 + len(object_ids)))
        for i in ids:
            await svc.wait_state(i, "failed")
    return ids


# -- auth ----------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/admin/events"),
    ("GET", "/admin/events/1"),
    ("POST", "/admin/events/1/replay"),
    ("POST", "/admin/replay"),
]


async def test_admin_endpoints_answer_403_saying_how_to_set_a_token_when_none_is_configured(
    tmp_path: Path,
) -> None:
    async with service(tmp_path, admin_token="") as svc:
        for method, path in ENDPOINTS:
            answer = await svc.http.request(method, svc.base + path, headers=AUTH, json={})
            assert answer.status_code == 403, (method, path)
            body = answer.json()
            assert body["error"] == "admin_disabled"
            assert "STAGESYNC_ADMIN_TOKEN" in body["message"]


async def test_admin_endpoints_answer_401_for_a_missing_or_wrong_token(svc: Service) -> None:
    wrong = [
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
    ]
    for headers in wrong:
        for method, path in ENDPOINTS:
            answer = await svc.http.request(method, svc.base + path, headers=headers, json={})
            assert answer.status_code == 401, (headers, method, path)
            assert answer.json()["error"] == "unauthorized"
            assert answer.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in answer.text


async def test_the_right_token_lists_events_in_the_spec_shape(svc: Service) -> None:
    await svc.send([event(7, "lead"), {"objectId": "not-a-number"}])
    await svc.wait_closed()
    answer = await svc.get("/admin/events")
    assert answer.status_code == 200
    body = answer.json()
    assert body["next_cursor"] is None
    invalid, synced = body["events"]
    assert set(synced) == EVENT_KEYS and set(invalid) == EVENT_KEYS
    assert synced["state"] == "synced" and synced["object_id"] == 7
    assert synced["stage"] == "lead" and synced["target_kind"] == "lead"
    assert synced["subscription_type"] == "contact.propertyChange"
    assert synced["received_at"] == "2026-01-01T00:00:00.000Z"
    assert synced["raw"]["propertyValue"] == "lead"
    assert invalid["state"] == "invalid"
    assert invalid["last_error"]["code"] == "invalid_event"
    assert invalid["raw"] == {"objectId": "not-a-number"}


# -- listing -------------------------------------------------------------------------


async def test_paging_through_250_events_with_the_cursor_returns_each_once_newest_first(
    svc: Service,
) -> None:
    stages = ["lead", "other"]
    for start in (0, 100, 200):
        count = 100 if start < 200 else 50
        batch = [event(10_000 + i, stages[i % 2]) for i in range(start, start + count)]
        assert (await svc.send(batch))["accepted"] == count
    await svc.wait_closed()

    async def walk(limit: int, **params: Any) -> list[list[int]]:
        pages: list[list[int]] = []
        cursor = None
        while True:
            query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
            answer = await svc.get("/admin/events", params=query)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            pages.append([e["id"] for e in body["events"]])
            cursor = body["next_cursor"]
            if cursor is None:
                return pages

    pages = await walk(100)
    assert [len(p) for p in pages] == [100, 100, 50]
    ids = [i for page in pages for i in page]
    assert ids == list(range(250, 0, -1))

    skipped = await walk(50, state="skipped")
    assert [len(p) for p in skipped] == [50, 50, 25]
    skipped_ids = [i for page in skipped for i in page]
    assert skipped_ids == sorted(skipped_ids, reverse=True)
    assert skipped_ids == list(range(250, 0, -2))

    # A page that ends exactly at the last event has no next cursor.
    exact = await walk(125)
    assert [len(p) for p in exact] == [125, 125]


async def test_filters_select_by_state_contact_and_received_time(svc: Service) -> None:
    await svc.send([event(1, "lead"), event(2, "other")])
    await svc.wait_closed()
    svc.clock.now = T0 + 3600
    await svc.send([event(1, "customer"), event(3, "lead")])
    await svc.wait_closed()

    async def ids(**params: Any) -> list[int]:
        answer = await svc.get("/admin/events", params=params)
        assert answer.status_code == 200, answer.text
        return [e["id"] for e in answer.json()["events"]]

    assert await ids() == [4, 3, 2, 1]
    assert await ids(object_id=1) == [3, 1]
    assert await ids(state="skipped") == [2]
    assert await ids(since="2026-01-01T00:30:00Z") == [4, 3]
    assert await ids(until="2026-01-01T00:30:00+00:00") == [2, 1]
    assert await ids(since="2026-01-01", until="2026-01-01T01:00:00") == [2, 1]
    assert await ids(state="synced", object_id=1, since="2026-01-01T00:30:00Z") == [3]


BAD_QUERIES = [
    ({"limit": "0"}, "'limit'"),
    ({"limit": "501"}, "'limit'"),
    ({"limit": "ten"}, "'limit'"),
    ({"state": "done"}, "'state'"),
    ({"since": "yesterday"}, "'since'"),
    ({"until": "2026-13-01"}, "'until'"),
    ({"object_id": "abc"}, "'object_id'"),
    ({"object_id": "-4"}, "'object_id'"),
    ({"object_id": str(2**64)}, "'object_id'"),
    ({"cursor": "bm90LWEtY3Vyc29y"}, "'cursor'"),
    ({"cursor": "!!!"}, "'cursor'"),
    # str.isdigit() takes '\u00b2' and int() refuses it, or more than 4,300 digits: were 500s.
    ({"limit": "\u00b2"}, "'limit'"),
    ({"limit": "9" * 5000}, "'limit'"),
    ({"object_id": "\u00b2"}, "'object_id'"),
    ({"object_id": "9" * 5000}, "'object_id'"),
    ({"cursor": "ZTrCsg"}, "'cursor'"),  # base64 of "e:\u00b2"
    ({"since": "0001-01-01T00:00:00+01:00"}, "'since'"),  # year 0 in UTC
    ({"until": "9999-12-31T23:59:59.999999Z"}, "'until'"),  # year 10000 once a float
]


async def test_bad_list_parameters_answer_400_naming_the_parameter(svc: Service) -> None:
    for query, words in BAD_QUERIES:
        answer = await svc.get("/admin/events", params=query)
        assert answer.status_code == 400, query
        body = answer.json()
        assert body["error"] == "bad_request"
        assert words in body["message"], (query, body)


async def test_a_database_failure_during_a_replay_is_a_503_saying_to_try_again(
    svc: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def full(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(svc.ctx.store, "replay_matching", full)
    monkeypatch.setattr(svc.ctx.store, "get_event", full)
    for answer in (
        await svc.post("/admin/replay", json={"state": "failed"}),
        await svc.post("/admin/events/1/replay"),
    ):
        assert answer.status_code == 503
        assert answer.json()["error"] == "storage_unavailable"


async def test_event_ids_that_are_not_ids_answer_404_in_json(svc: Service) -> None:
    for path in ("abc", "\u00b2", "9" * 30, "9" * 5000):
        for answer in (
            await svc.get(f"/admin/events/{path}"),
            await svc.post(f"/admin/events/{path}/replay"),
        ):
            assert answer.status_code == 404, path[:40]
            assert answer.json()["error"] == "not_found"


async def test_one_event_has_its_raw_payload_and_the_history_of_its_attempts(
    svc: Service,
) -> None:
    [event_id] = await make_failed(svc, 42)
    doc = await svc.event(event_id)
    assert set(doc) == EVENT_KEYS | {"history"}
    assert doc["raw"]["objectId"] == 42
    assert doc["last_error"] == {
        "code": "INVALID_EMAIL_ADDRESS",
        "message": "Email: invalid email address",
    }
    assert doc["history"] == [
        {
            "at": "2026-01-01T00:00:00.000Z",
            "outcome": "failed",
            "error": {"code": "INVALID_EMAIL_ADDRESS", "message": "Email: invalid email address"},
        }
    ]

    missing = await svc.get("/admin/events/999")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    huge = await svc.get(f"/admin/events/{2**70}")
    assert huge.status_code == 404


# -- replay --------------------------------------------------------------------------


async def test_replaying_a_failed_event_answers_202_and_it_syncs_again(svc: Service) -> None:
    [event_id] = await make_failed(svc, 5)
    svc.clock.now = T0 + 60
    with capture_logs() as logs:
        answer = await svc.post(f"/admin/events/{event_id}/replay")
    assert answer.status_code == 202
    assert answer.json()["id"] == event_id
    assert answer.json()["state"] in ("pending", "synced")

    doc = await svc.wait_state(event_id, "synced")
    assert doc["last_error"] is None
    assert doc["target_kind"] == "lead"
    assert [h["outcome"] for h in doc["history"]] == ["failed", "synced"]
    assert (doc["attempts"], doc["attempts_since_replay"]) == (2, 1)
    records = await svc.ctx.store.list_records("lead")
    assert [r.hubspot_id for r in records] == ["5"]

    [line] = [entry for entry in logs if entry["event"] == "replay_requested"]
    assert line["token_fingerprint"] == hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
    assert line["count"] == 1 and line["event_id"] == event_id and line["what"] == "event"
    assert TOKEN not in repr(logs)


async def test_replaying_a_synced_event_syncs_it_again(svc: Service) -> None:
    await svc.send([event(8, "customer")])
    first = await svc.wait_state(1, "synced")
    before = (await svc.ctx.store.list_records("contact"))[0].upserted_at
    svc.clock.now = T0 + 120

    answer = await svc.post("/admin/events/1/replay")
    assert answer.status_code == 202
    await svc.wait_closed()
    again = await svc.wait_state(1, "synced")
    assert [h["outcome"] for h in again["history"]] == ["synced", "synced"]
    assert again["target_id"] == first["target_id"]
    after = (await svc.ctx.store.list_records("contact"))[0].upserted_at
    assert after > before


async def test_replay_is_refused_with_409_for_pending_in_flight_retrying_and_invalid_events(
    tmp_path: Path,
) -> None:
    async with service(tmp_path, retry_base_s=3600, retry_max_s=3600) as svc:
        gate = asyncio.Event()
        entered = asyncio.Event()
        original = svc.ctx.dispatcher.target.upsert_batch

        async def held(requests: list[Any]) -> list[Any]:
            entered.set()
            await gate.wait()
            result: list[Any] = await original(requests)
            return result

        with target_answers(svc, held):
            await svc.send([event(1, "lead"), {"objectId": 1}])
            await asyncio.wait_for(entered.wait(), 5)
            in_flight = await svc.post("/admin/events/1/replay")
            assert in_flight.status_code == 409
            assert in_flight.json()["error"] == "not_replayable"
            assert "pending" in in_flight.json()["message"]
            gate.set()
            await svc.wait_state(1, "synced")

        invalid = await svc.post("/admin/events/2/replay")
        assert invalid.status_code == 409
        assert "invalid" in invalid.json()["message"]

        async def transient(requests: list[Any]) -> list[Any]:
            return [TransientError("http_503", "Service Unavailable") for _ in requests]

        with target_answers(svc, transient):
            await svc.send([event(2, "lead")])
            await svc.wait_state(3, "retrying")
            retrying = await svc.post("/admin/events/3/replay")
        assert retrying.status_code == 409
        assert "retrying" in retrying.json()["message"]

        unknown = await svc.post("/admin/events/404/replay")
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "not_found"


async def test_bulk_replay_by_filter_replays_only_matching_events_and_answers_the_count(
    svc: Service,
) -> None:
    failed = await make_failed(svc, 1, 2, 3)
    svc.clock.now = T0 + 3600
    later = await make_failed(svc, 4)
    await svc.send([event(5, "lead")])
    await svc.wait_closed()

    with capture_logs() as logs:
        one = await svc.post("/admin/replay", json={"state": "failed", "object_id": 2})
        assert one.status_code == 200
        assert one.json() == {"count": 1}
        await svc.wait_state(failed[1], "synced")
        assert (await svc.event(failed[0]))["state"] == "failed"

        timed = await svc.post(
            "/admin/replay", json={"state": "failed", "since": "2026-01-01T00:30:00Z"}
        )
        assert timed.json() == {"count": 1}
        await svc.wait_state(later[0], "synced")

        rest = await svc.post("/admin/replay", json={"state": "failed", "until": None})
        assert rest.json() == {"count": 2}
        for event_id in failed:
            await svc.wait_state(event_id, "synced")

        none_left = await svc.post("/admin/replay", json={"state": "failed"})
        assert none_left.json() == {"count": 0}

    lines = [entry for entry in logs if entry["event"] == "replay_requested"]
    assert [line["count"] for line in lines] == [1, 1, 2, 0]
    assert lines[0]["filter"] == {
        "state": "failed",
        "object_id": 2,
        "since": None,
        "until": None,
        "error_code": None,
    }
    assert lines[1]["filter"]["since"] == "2026-01-01T00:30:00.000Z"
    assert all(line["token_fingerprint"] == lines[0]["token_fingerprint"] for line in lines)
    assert TOKEN not in repr(logs)


BAD_BODIES = [
    (b"not json", 400, "JSON object"),
    (b"[]", 400, "JSON object"),
    (b'{"states": "failed"}', 400, "'states'"),
    (b'{"state": "gone"}', 400, "'state'"),
    (b'{"since": "last week"}', 400, "'since'"),
    (b'{"since": 1700000000}', 400, "'since'"),
    (b'{"object_id": "x1"}', 400, "'object_id'"),
    (b'{"object_id": true}', 400, "'object_id'"),
    ('{"object_id": "\u00b2"}'.encode(), 400, "'object_id'"),
    # Valid in its own offset, before year 1 in UTC: refused before anything is replayed.
    (b'{"since": "0001-01-01T00:00:00+01:00"}', 400, "'since'"),
    (b'{"until": "9999-12-31T23:59:59.999999Z"}', 400, "'until'"),
    (b'{"state": "pending"}', 409, "already queued"),
    (b'{"state": "invalid"}', 409, "cannot be"),
    (b"{" + b" " * 70_000 + b"}", 400, "at most"),
]


async def test_bulk_replay_with_a_bad_body_is_refused_with_a_reason(svc: Service) -> None:
    await svc.send([event(1, "lead")])
    await svc.wait_closed()
    for content, status, words in BAD_BODIES:
        answer = await svc.post(
            "/admin/replay", content=content, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == status, content[:40]
        assert words in answer.json()["message"], (content[:40], answer.json())
    assert (await svc.event(1))["state"] == "synced"


async def test_bulk_replay_with_an_empty_filter_replays_every_closed_valid_event(
    svc: Service,
) -> None:
    await svc.send([event(1, "lead"), event(2, "other"), {"objectId": "x"}])
    await svc.wait_closed()
    answer = await svc.post("/admin/replay", json={})
    assert answer.json() == {"count": 2}
    await svc.wait_closed()
    empty = await svc.post(
        "/admin/replay", content=b"", headers={"Content-Type": "application/json"}
    )
    assert empty.json() == {"count": 2}  # no body is no filter
    await svc.wait_closed()
    assert (await svc.event(3))["state"] == "invalid"
    for event_id in (1, 2):
        doc = await svc.wait_state(event_id, "synced", "skipped")
        assert len(doc["history"]) == 3  # first run and two replays
