"""Sync settings over real HTTP on both backends: live on every instance, checked the same
way through the API, the CLI and the page's form, kept in a history, and turned off."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.fakes.hubspot import create_fake_hubspot, default_stage_options, stage_option
from tests.integration.conftest import Backend
from tests.integration.test_two_instances import service_dsn
from tests.support.process import run_cli, service_env
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

TOKEN = "sync-settings-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINGERPRINT = hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
WAIT_S = 5.0


@pytest.fixture
def backend(database: Backend) -> Backend:
    """These tests run the whole service, so on the real databases only."""
    return database


class Instance:
    """One running app on the shared database."""

    def __init__(self, app: Starlette, base: str, http: httpx.AsyncClient) -> None:
        self.app, self.base, self.http = app, base, http

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(self.base + path, headers=AUTH)

    async def put(self, body: dict[str, Any]) -> httpx.Response:
        return await self.http.put(self.base + "/admin/sync-settings", headers=AUTH, json=body)

    async def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = (await self.http.get(self.base + "/status")).json()
        return doc

    async def send(self, events: list[dict[str, Any]]) -> None:
        url = f"{self.base}/webhooks/hubspot"
        body, headers = signed(url, events, SECRET)
        assert (await self.http.post(url, content=body, headers=headers)).status_code == 200

    async def closed_event(self, object_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            answer = await self.get(f"/admin/events?object_id={object_id}")
            events = answer.json()["events"]
            if events and events[0]["state"] not in ("pending", "retrying"):
                doc: dict[str, Any] = events[0]
                return doc
            assert time.monotonic() < deadline, f"event of {object_id} stays open"
            await asyncio.sleep(0.02)


def database_url(backend: Backend) -> str:
    return service_dsn(backend.url) if backend.name == "postgres" else backend.url


@asynccontextmanager
async def instance(tmp_path: Path, backend: Backend, **overrides: Any) -> AsyncIterator[Instance]:
    settings = build_settings(
        tmp_path, **{"database_url": database_url(backend), "admin_token": TOKEN, **overrides}
    )
    app = create_app(settings)
    async with running_server(app) as base, httpx.AsyncClient(timeout=10) as http:
        yield Instance(app, base, http)


async def test_a_change_through_instance_a_applies_on_instance_b_within_2_s(
    tmp_path: Path, backend: Backend
) -> None:
    async with (
        instance(tmp_path, backend) as a,
        instance(tmp_path, backend) as b,
    ):
        assert (await b.status())["sync_settings"] == {
            "source": "config",
            "version": 0,
            "lead_sync": True,
            "contact_sync": True,
        }
        answer = await a.put(
            {
                "version": 0,
                "lead_sync": False,
                "lead_stages": ["lead", "opportunity"],
                "contact_stages": ["customer"],
            }
        )
        assert answer.status_code == 200, answer.text
        saved_at = time.monotonic()
        while (await b.status())["sync_settings"]["version"] != 1:
            assert time.monotonic() - saved_at < 2.0, "instance B still uses version 0"
            await asyncio.sleep(0.05)
        status = await b.status()
        assert status["lead_stages"] == ["lead", "opportunity"]
        assert status["contact_stages"] == ["customer"]
        assert status["sync_settings"] == {
            "source": "database",
            "version": 1,
            "lead_sync": False,
            "contact_sync": True,
        }
        # B dispatches with the new settings: lead sync is off, "opportunity" is a lead
        # stage now and "evangelist" no stage at all.
        await b.send([event(1, "lead"), event(2, "opportunity"), event(3, "customer")])
        await b.send([event(4, "evangelist")])
        assert (await b.closed_event(1))["reason"] == "sync-off"
        assert (await b.closed_event(2))["reason"] == "sync-off"
        third = await b.closed_event(3)
        assert (third["state"], third["target_kind"]) == ("synced", "contact")
        assert (await b.closed_event(4))["reason"] == "stage-not-synced"


async def test_overlap_stale_version_reset_and_history_through_the_api(
    tmp_path: Path, backend: Backend
) -> None:
    async with instance(tmp_path, backend) as a:
        overlap = await a.put({"version": 0, "lead_stages": ["lead", "customer"]})
        assert overlap.status_code == 400
        assert overlap.json()["error"] == "stages_overlap"
        assert "'customer'" in overlap.json()["message"]
        assert (await a.get("/admin/sync-settings")).json()["version"] == 0

        first = await a.put({"version": 0, "contact_sync": False})
        assert first.status_code == 200, first.text
        doc = first.json()
        assert (doc["version"], doc["source"], doc["updated_by"]) == (1, "database", FINGERPRINT)
        assert doc["contact_sync"] is False and doc["lead_sync"] is True

        stale = await a.put({"version": 0, "contact_sync": True})
        assert stale.status_code == 409
        assert stale.json()["error"] == "version_conflict"

        reset = await a.http.delete(a.base + "/admin/sync-settings", headers=AUTH)
        assert reset.status_code == 200
        assert (reset.json()["source"], reset.json()["version"]) == ("config", 2)
        assert reset.json()["contact_sync"] is True

        history = (await a.get("/admin/sync-settings/history")).json()["history"]
        assert [h["version"] for h in history] == [2, 1]
        assert {h["by"] for h in history} == {FINGERPRINT}
        assert history[1]["changes"] == {"contact_sync": {"from": True, "to": False}}
        assert history[0]["changes"]["reset"] is True
        assert TOKEN not in orjson.dumps(history).decode()


async def test_a_forged_form_post_with_a_stage_in_both_syncs_gets_the_error_page(
    tmp_path: Path, backend: Backend
) -> None:
    async with instance(tmp_path, backend) as a:
        form = {
            "version": "0",
            "lead_sync": "on",
            "contact_sync": "on",
            "lead_stages": ["lead", "customer"],
            "contact_stages": ["customer"],
        }
        answer = await a.http.post(
            a.base + "/admin/sync", data=form, headers={**AUTH, "Accept": "text/html"}
        )
        assert answer.status_code == 400
        assert "Stage &#39;customer&#39; is picked for both" in answer.text
        assert (await a.get("/admin/sync-settings")).json()["version"] == 0

        form["lead_stages"] = ["lead", "subscriber"]
        saved = await a.http.post(
            a.base + "/admin/sync", data=form, headers=AUTH, follow_redirects=False
        )
        assert saved.status_code == 303
        assert saved.headers["location"] == "/admin/sync?saved=1&added=subscriber"
        page = await a.http.get(a.base + saved.headers["location"], headers=AUTH)
        assert "Saved as version 1" in page.text
        assert "needs <code>STAGESYNC_HUBSPOT_ACCESS_TOKEN</code>" in page.text  # no token here


async def test_the_cli_shows_sets_refuses_an_overlap_and_resets(
    tmp_path: Path, backend: Backend
) -> None:
    env = service_env(tmp_path, database_url=database_url(backend))
    async with instance(tmp_path, backend) as a:  # creates the database, and watches
        refused = await asyncio.to_thread(
            run_cli, env, "sync-settings", "set", "--lead-stages", "lead,customer,evangelist"
        )
        assert refused.returncode == 1
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 2 and "'customer'" in lines[0] and "'evangelist'" in lines[1]

        done = await asyncio.to_thread(
            run_cli, env, "sync-settings", "set", "--contact-sync", "off", "--lead-stages", "lead"
        )
        assert done.returncode == 0, done.stderr
        shown = await asyncio.to_thread(run_cli, env, "sync-settings", "--json")
        doc = orjson.loads(shown.stdout)
        assert (doc["version"], doc["source"], doc["updated_by"]) == (1, "database", "cli")
        assert doc["lead_stages"] == ["lead"] and doc["contact_sync"] is False

        deadline = time.monotonic() + 2.0
        while (await a.status())["sync_settings"]["version"] != 1:
            assert time.monotonic() < deadline, "the server did not pick up the CLI's change"
            await asyncio.sleep(0.05)

        reset = await asyncio.to_thread(run_cli, env, "sync-settings", "reset")
        assert reset.returncode == 0, reset.stderr
        again = orjson.loads(
            (await asyncio.to_thread(run_cli, env, "sync-settings", "--json")).stdout
        )
        assert (again["version"], again["source"]) == (2, "config")
        history = (await a.get("/admin/sync-settings/history")).json()["history"]
        assert [(h["version"], h["by"]) for h in history] == [(2, "cli"), (1, "cli")]


async def test_the_catalogue_is_the_portals_own_with_a_custom_stage_and_is_cached(
    tmp_path: Path, backend: Backend
) -> None:
    fake = create_fake_hubspot()
    fake.stage_options = [
        *default_stage_options(),
        stage_option("93410101", "Partner", 4),
        stage_option("old_stage", "Old stage", 9, hidden=True),
    ]
    async with (
        running_server(fake.app) as hubspot_url,
        instance(
            tmp_path,
            backend,
            hubspot_access_token=fake.token,
            hubspot_api_url=hubspot_url,
        ) as a,
    ):
        doc = (await a.get("/admin/stages")).json()
        assert doc["source"] == "hubspot"
        by_id = {s["id"]: s for s in doc["stages"]}
        assert by_id["93410101"] == {
            "id": "93410101",
            "label": "Partner",
            "order": 4,
            "hidden": False,
            "sync": None,
        }
        assert by_id["old_stage"]["hidden"] is True
        assert by_id["lead"]["sync"] == "lead" and by_id["customer"]["sync"] == "contact"
        assert [s["order"] for s in doc["stages"]] == sorted(s["order"] for s in doc["stages"])

        unknown = await a.put({"version": 0, "lead_stages": ["lead", "nosuchstage"]})
        assert unknown.status_code == 400
        assert unknown.json()["error"] == "unknown_stage"
        assert "'nosuchstage'" in unknown.json()["message"]

        custom = await a.put({"version": 0, "contact_stages": ["customer", "93410101"]})
        assert custom.status_code == 200, custom.text
        doc = (await a.get("/admin/stages")).json()
        assert {s["id"]: s["sync"] for s in doc["stages"]}["93410101"] == "contact"
        assert fake.property_reads == 1  # cached for 10 minutes


async def test_without_a_token_the_catalogue_is_the_default_stages_plus_configured_ids(
    tmp_path: Path, backend: Backend
) -> None:
    async with instance(tmp_path, backend, lead_stages=["lead", "77001"]) as a:
        doc = (await a.get("/admin/stages")).json()
        assert doc["source"] == "default"
        ids = [s["id"] for s in doc["stages"]]
        assert ids[:8] == [
            "subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead",
            "opportunity", "customer", "evangelist", "other",
        ]  # fmt: skip
        assert ids[8:] == ["77001"]
        # Any stage id is accepted when the catalogue is not the portal's.
        answer = await a.put({"version": 0, "lead_stages": ["lead", "anything"]})
        assert answer.status_code == 200, answer.text


MALFORMED = [
    {},
    {"version": "1"},
    {"version": 0, "lead_sync": "yes"},
    {"version": 0, "lead_stages": "lead"},
    {"version": 0, "x": 1},
]


async def test_the_history_pages_back_through_every_change(
    tmp_path: Path, backend: Backend
) -> None:
    async with instance(tmp_path, backend) as a:
        for version in range(5):
            answer = await a.put({"version": version, "contact_sync": version % 2 == 1})
            assert answer.status_code == 200, answer.text
        first = (await a.get("/admin/sync-settings/history?limit=2")).json()
        assert [h["version"] for h in first["history"]] == [5, 4]
        second = (
            await a.get(f"/admin/sync-settings/history?limit=2&before={first['next_before']}")
        ).json()
        assert [h["version"] for h in second["history"]] == [3, 2]
        last = (
            await a.get(f"/admin/sync-settings/history?limit=2&before={second['next_before']}")
        ).json()
        assert [h["version"] for h in last["history"]] == [1] and last["next_before"] is None
        bad = await a.get("/admin/sync-settings/history?before=x")
        assert bad.status_code == 400 and bad.json()["error"] == "bad_request"


@pytest.mark.parametrize("body", MALFORMED)
async def test_a_malformed_put_is_a_400_in_the_error_shape(
    tmp_path: Path, body: dict[str, Any]
) -> None:
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'one.db'}")
    async with instance(tmp_path, backend) as a:
        answer = await a.put(body)
        assert answer.status_code == 400
        assert answer.json()["error"] == "bad_request" and answer.json()["message"]


async def test_a_put_that_is_not_json_is_told_what_a_settings_body_looks_like(
    tmp_path: Path,
) -> None:
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'one.db'}")
    async with instance(tmp_path, backend) as a:
        answer = await a.http.put(
            a.base + "/admin/sync-settings", headers=AUTH, content=b"not json"
        )
    assert answer.status_code == 400
    message = answer.json()["message"]
    assert "lead_sync" in message and "replay" not in message


NEW_ENDPOINTS = [
    ("GET", "/admin/stages"),
    ("GET", "/admin/sync-settings"),
    ("PUT", "/admin/sync-settings"),
    ("DELETE", "/admin/sync-settings"),
    ("GET", "/admin/sync-settings/history"),
    ("GET", "/admin/health"),
    ("GET", "/admin/events.csv"),
]


async def test_the_new_admin_endpoints_need_the_token(tmp_path: Path) -> None:
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'one.db'}")
    async with instance(tmp_path, backend) as a:
        for method, path in NEW_ENDPOINTS:
            answer = await a.http.request(method, a.base + path, json={"version": 0})
            assert answer.status_code == 401, (method, path)
            assert answer.json()["error"] == "unauthorized"
    async with instance(tmp_path, backend, admin_token="") as off:
        for method, path in NEW_ENDPOINTS:
            answer = await off.http.request(method, off.base + path, headers=AUTH, json={})
            assert answer.status_code == 403, (method, path)
    async with instance(tmp_path, backend) as a:
        assert (await a.get("/admin/sync-settings")).json()["version"] == 0  # nothing saved
