"""The event-log page in headless Chromium: log in, find a failed event, replay it.

Uses Debian's ``chromium`` driven by Playwright; the browser is never downloaded. Set
``UPDATE_DOCS_SCREENSHOT=1`` to refresh ``docs/admin-page.png`` from this run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.errors import PermanentError
from receiver.models import EventFilter
from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "browser-token-for-tests-00112233445566"
WAIT_S = 5.0

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(
        "needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )
async_api = pytest.importorskip(
    "playwright.async_api", reason="needs playwright from PyPI (pip install playwright)"
)

LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def test_an_operator_logs_in_sees_a_failed_event_replays_it_and_sees_it_synced(
    tmp_path: Path,
) -> None:
    app = create_app(build_settings(tmp_path, admin_token=TOKEN))
    async with running_server(app) as base, httpx.AsyncClient(timeout=10) as http:
        ctx = app.state.ctx
        target = ctx.dispatcher.target

        async def send(events: list[Any]) -> None:
            url = f"{base}/webhooks/hubspot"
            body, headers = signed(url, events, SECRET)
            assert (await http.post(url, content=body, headers=headers)).status_code == 200

        async def settled() -> None:
            deadline = asyncio.get_running_loop().time() + WAIT_S
            while (await ctx.store.counts()).get("pending"):
                assert asyncio.get_running_loop().time() < deadline, "events stay pending"
                await asyncio.sleep(0.02)

        # The CRM rejects the first upsert of contact 4711, as Salesforce would a bad email.
        async def rejecting(requests: list[Any]) -> list[Any]:
            return [
                PermanentError("INVALID_EMAIL_ADDRESS", "Email: invalid email address: ada@@x")
                for _ in requests
            ]

        target.upsert_batch = rejecting
        await send([event(4711, "salesqualifiedlead")])
        await settled()
        del target.upsert_batch
        await send(
            [event(100 + i, ("lead", "customer", "subscriber")[i % 3]) for i in range(8)]
            + [{"objectId": "oops", "subscriptionType": "contact.propertyChange"}]
        )
        await settled()
        failed = await ctx.store.list_events(EventFilter(state="failed"), 10)
        assert [e.object_id for e in failed] == [4711]
        failed_id = failed[0].id

        problems: list[str] = []
        async with async_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 860})
                page.on(
                    "console",
                    lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
                )
                page.on("pageerror", lambda e: problems.append(str(e)))

                await page.goto(f"{base}/admin/")
                await page.get_by_label("Admin token").fill(TOKEN)
                await page.get_by_role("button", name="Log in").click()
                await page.wait_for_url(f"{base}/admin/")

                failed_table = page.get_by_role("table", name="failed events")
                row = failed_table.locator(f"#event-{failed_id}")
                await async_api.expect(row).to_contain_text("failed")
                await async_api.expect(row).to_contain_text("INVALID_EMAIL_ADDRESS")
                await async_api.expect(row).to_contain_text("4711")
                shot = tmp_path / "admin-page.png"
                await page.screenshot(path=str(shot))

                await row.get_by_role("button", name=f"Replay event {failed_id}").click()
                await page.wait_for_url(f"{base}/admin/view/{failed_id}?replayed=1")
                # The page refreshes itself while the event is open.
                await async_api.expect(page.locator("#event-state")).to_have_text(
                    "synced", timeout=WAIT_S * 1000
                )
                await async_api.expect(page.get_by_role("table", name="attempts")).to_contain_text(
                    "failed"
                )

                await page.get_by_role("link", name="← event log").click()
                await async_api.expect(
                    page.get_by_role("table", name="failed events")
                ).to_have_count(0)
            finally:
                await browser.close()

    assert problems == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "admin-page.png")
