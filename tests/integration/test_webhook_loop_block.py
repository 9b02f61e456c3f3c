"""A large batch of malformed events does not hold the event loop.

Each malformed event goes through pydantic (tens of microseconds); 100,000 of them in one
signed body, validated in one go, held every other request of the process for seconds.
The longest gap between ticks of a 1 ms timer, while the app handles such a body in this
test's own loop, is how long the loop was held.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import orjson

from receiver.ops.nesting import MAX_EVENT_DEPTH
from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

EVENTS = 100_000
TICK_S = 0.001
# The loop may be held for a few ms per slice; a GC pass or a busy machine adds some.
LONGEST_HOLD_S = 0.25


class LoopWatch:
    """Ticks every :data:`TICK_S` and keeps the longest gap past the tick."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(TICK_S)
            self.longest = max(self.longest, time.perf_counter() - started - TICK_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_a_100k_invalid_event_batch_never_holds_the_loop_for_long(tmp_path: Path) -> None:
    settings = build_settings(tmp_path, max_body_bytes=4 * 1024 * 1024)
    app = create_app(settings)
    # Each malformed differently, so none is a duplicate of another.
    body = orjson.dumps([{"n": n} for n in range(EVENTS)])
    async with running_server(app) as base, httpx.AsyncClient(timeout=120) as http:
        url = f"{base}/webhooks/hubspot"
        data, headers = signed(url, body, SECRET)
        watch = LoopWatch()
        watch.start()
        answer = await http.post(url, content=data, headers=headers)
        await watch.stop()
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"accepted": 0, "duplicates": 0, "invalid": EVENTS}
    print(f"loop held at most {watch.longest * 1000:.1f} ms by {EVENTS} invalid events")
    assert watch.longest < LONGEST_HOLD_S, f"the loop was held for {watch.longest:.3f} s"


async def test_an_event_nested_deeper_than_the_bound_is_stored_invalid_and_cut(
    tmp_path: Path,
) -> None:
    settings = build_settings(tmp_path, admin_token="deep-admin-token-0123456789")
    app = create_app(settings)
    deep: object = "bottom"
    for _ in range(300):
        deep = {"k": deep}
    shallow: object = "bottom"
    for _ in range(MAX_EVENT_DEPTH - 1):  # with the event itself, exactly the bound
        shallow = {"k": shallow}
    async with running_server(app) as base, httpx.AsyncClient(timeout=10) as http:
        url = f"{base}/webhooks/hubspot"
        # The standard library writes what orjson refuses to (past 254 levels).
        batch = json.dumps([event(1, "lead", extra=deep), event(2, "lead", extra=shallow)])
        data, headers = signed(url, batch.encode(), SECRET)
        answer = await http.post(url, content=data, headers=headers)
        assert answer.json() == {"accepted": 1, "duplicates": 0, "invalid": 1}
        auth = {"Authorization": "Bearer deep-admin-token-0123456789"}
        listed = await http.get(f"{base}/admin/events?state=invalid", headers=auth)
        assert listed.status_code == 200
        (stored,) = listed.json()["events"]
        assert f"more than {MAX_EVENT_DEPTH} levels" in stored["last_error"]["message"]
        assert stored["raw"]["objectId"] == 1  # the shallow part is kept for inspection
        shown = await http.get(f"{base}/admin/events/{stored['id']}", headers=auth)
        assert shown.status_code == 200
