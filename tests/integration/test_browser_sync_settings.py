"""The Sync settings screen in headless Chromium: pick stages, see the other sync's
stages disabled, save, see the version change, and get the error page for a forged
overlap. Set ``UPDATE_DOCS_SCREENSHOT=1`` to refresh ``docs/sync-settings.png``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from receiver.web.app import create_app
from tests.conftest import build_settings
from tests.fakes.hubspot import create_fake_hubspot, default_stage_options, stage_option
from tests.integration.test_browser import CHROMIUM, LAUNCH_ARGS, ROOT
from tests.support.servers import running_server

TOKEN = "browser-token-for-tests-00112233445566"

pytestmark = pytest.mark.browser

async_api = pytest.importorskip(
    "playwright.async_api", reason="needs playwright from PyPI (pip install playwright)"
)


async def test_an_operator_picks_stages_saves_and_a_forged_overlap_is_refused(
    tmp_path: Path,
) -> None:
    fake = create_fake_hubspot()
    fake.stage_options = [*default_stage_options(), stage_option("93410101", "Partner", 5)]
    async with running_server(fake.app) as hubspot_url:
        settings = build_settings(
            tmp_path,
            admin_token=TOKEN,
            hubspot_access_token=fake.token,
            hubspot_api_url=hubspot_url,
        )
        app = create_app(settings)
        async with running_server(app) as base, httpx.AsyncClient(timeout=10) as http:
            problems: list[str] = []
            async with async_api.async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 900})
                    page.on(
                        "console",
                        lambda m: (
                            problems.append(m.text) if m.type in ("error", "warning") else None
                        ),
                    )
                    page.on("pageerror", lambda e: problems.append(str(e)))
                    await page.goto(f"{base}/admin/login")
                    await page.get_by_label("Admin token").fill(TOKEN)
                    await page.get_by_role("button", name="Log in").click()
                    await page.wait_for_url(f"{base}/admin/")
                    await page.get_by_role("link", name="Sync settings").click()
                    await page.wait_for_url(f"{base}/admin/sync")
                    expect = async_api.expect
                    await expect(page.locator("#settings-version")).to_contain_text("Version 0")

                    lead = page.get_by_role("group", name="Lead sync stages")
                    contact = page.get_by_role("group", name="Contact sync stages")
                    # Stages held by Contact sync are shown, disabled, with a note.
                    held = lead.get_by_role("checkbox", name="Customer", exact=True)
                    await expect(held).to_be_disabled()
                    await expect(lead.locator("li", has_text="Customer")).to_contain_text(
                        "held by Contact sync"
                    )
                    await expect(
                        contact.get_by_role("checkbox", name="Lead", exact=True)
                    ).to_be_disabled()
                    # The portal's custom stage is offered by its label.
                    await lead.get_by_role("checkbox", name="Partner", exact=True).check()
                    await lead.get_by_role("checkbox", name="Subscriber", exact=True).check()
                    await page.get_by_label("Contact sync is on").uncheck()
                    await page.get_by_role("button", name="Save sync settings").click()
                    await page.wait_for_url(f"{base}/admin/sync?saved=1*")
                    await expect(page.get_by_role("status")).to_contain_text("version 1")
                    await expect(page.locator("#settings-version")).to_contain_text("Version 1")
                    offer = page.get_by_role("region", name="backfill offer")
                    await expect(offer).to_contain_text("Subscriber, Partner")
                    await expect(
                        contact.get_by_role("checkbox", name="Partner", exact=True)
                    ).to_be_disabled()
                    shot = tmp_path / "sync-settings.png"
                    await page.screenshot(path=str(shot), full_page=True)

                    # A forged post (the disabled box enabled by hand) gets the error page.
                    await contact.get_by_role("checkbox", name="Partner", exact=True).evaluate(
                        "box => { box.disabled = false; box.checked = true; }"
                    )
                    await page.get_by_label("Contact sync is on").check()
                    await page.get_by_role("button", name="Save sync settings").click()
                    await expect(page.get_by_role("alert")).to_contain_text(
                        "Stage '93410101' is picked for both"
                    )
                finally:
                    await browser.close()
            answer = await http.get(
                f"{base}/admin/sync-settings", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            doc = answer.json()
            assert doc["version"] == 1 and doc["contact_sync"] is False
            assert doc["lead_stages"] == [
                "subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "93410101",
            ]  # fmt: skip
    # The forged post's answer is a 400, which Chromium reports on the console.
    assert [p for p in problems if "status of 400" not in p] == []
    assert len(problems) <= 1
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "sync-settings.png")
