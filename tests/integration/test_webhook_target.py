"""The webhook target through the service: what a receiver sees across retries."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from receiver.models import OPEN_STATES, EventFilter
from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.fakes.webhook_receiver import PATH, FakeWebhookReceiver
from tests.fakes.webhook_receiver import SECRET as WEBHOOK_SECRET
from tests.support.servers import running_server
from tests.support.webhooks import event, signed


async def test_every_retry_of_one_delivery_carries_the_same_webhook_id(tmp_path: Path) -> None:
    fake = FakeWebhookReceiver(failure="unavailable")
    occurred = 1_714_564_800_250
    async with running_server(fake.app) as receiver_url:
        settings = build_settings(
            tmp_path,
            target="webhook",
            webhook_url=receiver_url + PATH,
            webhook_secret=WEBHOOK_SECRET,
            retry_base_s=0.1,
            retry_max_s=0.3,
        )
        app = create_app(settings)
        async with running_server(app) as url, httpx.AsyncClient(timeout=10) as http:
            body, headers = signed(
                f"{url}/webhooks/hubspot", [event(301, "lead", occurred_at=occurred)], SECRET
            )
            assert (
                await http.post(f"{url}/webhooks/hubspot", content=body, headers=headers)
            ).status_code == 200
            store = app.state.ctx.store
            deadline = time.monotonic() + 10
            while len(fake.received) < 3:
                assert time.monotonic() < deadline, fake.received
                await asyncio.sleep(0.02)
            fake.failure = None
            while True:
                events = await store.list_events(EventFilter(object_id=301), 10)
                if events and events[0].state not in OPEN_STATES:
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)

    assert events[0].state == "synced"
    ids = {message_id for message_id, _ in fake.received}
    assert ids == {f"evt_{events[0].id}_lead"}
    assert fake.calls["upsert"] == 1
    payload = fake.deliveries[0].payload
    assert payload == {
        "type": "contact.upsert",
        "kind": "lead",
        "hubspot_id": 301,
        "fields": {"lifecyclestage": "lead"},
        "occurred_at": datetime.fromtimestamp(occurred / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }
