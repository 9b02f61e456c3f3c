"""Every reader survives deeply nested payloads already in the database.

Before ingest refused events nested past 32 levels, one signed event nested 300 levels
deep was stored as received, and every answer holding it failed with a 500: JSON writers
stop at a depth, and the answers nest the payload a few levels deeper still. Here such
payloads are written into the database directly, as an older version left them, and
each reader is asked for them: the admin API's list and show, the page, and the CLI.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from receiver.models import EventFilter, NewEvent
from receiver.ops.nesting import CUT, MAX_EVENT_DEPTH
from receiver.store.base import EventStore
from receiver.store.rows import UNREADABLE_RAW
from receiver.web.app import create_app
from tests.conftest import build_settings
from tests.integration.conftest import Backend
from tests.support.process import run_cli, service_env
from tests.support.servers import running_server

TOKEN = "deep-readers-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def nested(levels: int) -> bytes:
    """An event whose ``extra`` key nests ``levels`` objects, written without recursion."""
    return b'{"objectId":5,"extra":' + b'{"k":' * levels + b"1" + b"}" * levels + b"}"


def stored(raw: bytes, error: str | None) -> NewEvent:
    return NewEvent(
        dedup_key=bytes(8) + hashlib.blake2b(raw, digest_size=16).digest(),
        raw=raw,
        object_id=None,
        subscription_type=None,
        occurred_at=None,
        stage=None,
        invalid_error=error,
    )


# 300 levels: orjson reads it but cannot write it; 2,000: orjson cannot even read it.
DEEP = [nested(300), nested(2000)]


async def _insert(store: EventStore) -> None:
    result = await store.ingest(
        [stored(raw, "stored by an older version") for raw in DEEP], time.time()
    )
    assert result.invalid == len(DEEP)


async def test_the_store_reads_back_payloads_json_cannot_nest_that_deeply(
    store: EventStore,
) -> None:
    await _insert(store)
    events = await store.list_events(EventFilter(), 10)
    # Newest first: the 2,000 levels come back as a placeholder, the 300 as they are.
    assert [_depth(e.raw) for e in events] == [1, 301]
    assert events[0].raw == UNREADABLE_RAW
    for event in events:
        assert await store.get_event(event.id) == event


@pytest.fixture
async def app_with_deep_events(tmp_path: Path) -> AsyncIterator[str]:
    settings = build_settings(tmp_path, admin_token=TOKEN)
    store = Backend("sqlite", settings.database_url).new()
    await store.open()
    try:
        await _insert(store)
    finally:
        await store.close()
    app = create_app(settings)
    async with running_server(app) as base:
        yield base


def _depth(doc: object) -> int:
    """Objects on the path through ``extra`` and then ``k``, the event itself included."""
    depth = 0
    while isinstance(doc, dict):
        doc = doc.get("extra", doc.get("k"))
        depth += 1
    return depth


async def test_the_admin_api_and_page_answer_for_deep_payloads(app_with_deep_events: str) -> None:
    base = app_with_deep_events
    async with httpx.AsyncClient(timeout=10) as http:
        listed = await http.get(f"{base}/admin/events", headers=AUTH)
        assert listed.status_code == 200, listed.text
        events = listed.json()["events"]
        assert len(events) == len(DEEP)
        for doc in events:
            text = orjson.dumps(doc["raw"]).decode()
            assert CUT in text or "cannot be read back" in text
            assert _depth(doc["raw"]) <= MAX_EVENT_DEPTH
            shown = await http.get(f"{base}/admin/events/{doc['id']}", headers=AUTH)
            assert shown.status_code == 200, shown.text
            page = await http.get(f"{base}/admin/view/{doc['id']}", headers=AUTH)
            assert page.status_code == 200, page.text
        index = await http.get(f"{base}/admin/", headers=AUTH)
        assert index.status_code == 200


async def test_the_cli_lists_and_shows_deep_payloads(tmp_path: Path) -> None:
    env = service_env(tmp_path)
    store = Backend("sqlite", env["STAGESYNC_DATABASE_URL"]).new()
    await store.open()
    try:
        await _insert(store)
    finally:
        await store.close()
    listed = run_cli(env, "events", "--json")
    assert listed.returncode == 0, listed.stderr
    ids = [orjson.loads(line)["id"] for line in listed.stdout.splitlines()]
    assert len(ids) == len(DEEP)
    for event_id in ids:
        shown = run_cli(env, "events", "show", str(event_id))
        assert shown.returncode == 0, shown.stderr
        assert orjson.loads(shown.stdout)["id"] == event_id
    plain = run_cli(env, "events")
    assert plain.returncode == 0 and "Traceback" not in plain.stderr
