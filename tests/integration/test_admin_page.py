"""The event-log page over HTTP: login and cookie, CSRF checks, listing, one event, replays."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from structlog.testing import capture_logs

from receiver.errors import PermanentError
from receiver.web.app import create_app
from receiver.web.auth import COOKIE_NAME, SESSION_S
from tests.conftest import SECRET, build_settings
from tests.support.clock import Clock
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

TOKEN = "page-token-for-tests-9876543210fedcba"
HTML = {"Accept": "text/html,application/xhtml+xml"}
T0 = 1_767_225_600.0
WAIT_S = 5.0


class Page:
    """A running app and a browser-like client (cookies kept, redirects not followed)."""

    def __init__(self, app: Any, base: str, http: httpx.AsyncClient, clock: Clock) -> None:
        self.app = app
        self.base = base
        self.http = http
        self.clock = clock
        self.origin = {"Origin": base}

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    async def send(self, events: list[Any]) -> None:
        url = f"{self.base}/webhooks/hubspot"
        body, headers = signed(url, events, SECRET, now_ms=int(self.clock() * 1000))
        assert (await self.http.post(url, content=body, headers=headers)).status_code == 200

    async def login(self) -> httpx.Response:
        return await self.http.post(
            f"{self.base}/admin/login", data={"token": TOKEN}, headers={**HTML, **self.origin}
        )

    async def get(self, path: str, **headers: str) -> httpx.Response:
        return await self.http.get(self.base + path, headers={**HTML, **headers})

    async def post(self, path: str, **headers: str) -> httpx.Response:
        return await self.http.post(self.base + path, headers={**HTML, **headers})

    async def state(self, event_id: int) -> str:
        found = await self.ctx.store.get_event(event_id)
        return str(found.state)

    async def wait_state(self, event_id: int, state: str) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while await self.state(event_id) != state:
            assert asyncio.get_running_loop().time() < deadline, f"event {event_id} not {state}"
            await asyncio.sleep(0.02)

    async def settled(self) -> None:
        """Wait until no event is pending or retrying."""
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            counts = await self.ctx.store.counts()
            if not counts.get("pending") and not counts.get("retrying"):
                return
            assert asyncio.get_running_loop().time() < deadline, "events stay open"
            await asyncio.sleep(0.02)

    async def make_failed(self, *object_ids: int) -> None:
        target = self.ctx.dispatcher.target

        async def rejected(requests: list[Any]) -> list[Any]:
            return [PermanentError("INVALID_FIELD", "Title: too long") for _ in requests]

        target.upsert_batch = rejected
        try:
            await self.send([event(i, "lead") for i in object_ids])
            await self.settled()
        finally:
            del target.upsert_batch


@asynccontextmanager
async def page(tmp_path: Path, **overrides: Any) -> AsyncIterator[Page]:
    clock = Clock(T0)
    settings = build_settings(tmp_path, **{"admin_token": TOKEN, "lease_s": 86_400, **overrides})
    app = create_app(settings, clock=clock)
    async with running_server(app) as base, httpx.AsyncClient(timeout=10) as http:
        yield Page(app, base, http, clock)


def login_redirect(answer: httpx.Response, to: str = "/admin/login") -> bool:
    return answer.status_code == 303 and answer.headers["location"] == to


def rows(html: str, section: str) -> list[int]:
    """Event ids listed in the table labelled ``section``."""
    match = re.search(rf'<table class="events" aria-label="{section}">(.*?)</table>', html, re.S)
    assert match, f"no table {section!r}"
    return [int(i) for i in re.findall(r'<tr id="event-(\d+)"', match.group(1))]


# -- access --------------------------------------------------------------------------


async def test_the_page_is_403_and_says_how_to_set_a_token_when_none_is_configured(
    tmp_path: Path,
) -> None:
    async with page(tmp_path, admin_token="") as p:
        html = await p.get("/admin/")
        assert html.status_code == 403
        assert "STAGESYNC_ADMIN_TOKEN" in html.text
        assert html.headers["content-type"].startswith("text/html")
        api = await p.http.get(f"{p.base}/admin/")
        assert api.status_code == 403
        assert api.json()["error"] == "admin_disabled"
        login = await p.login()
        assert login.status_code == 403


async def test_without_a_session_browsers_are_sent_to_the_login_form_and_json_clients_get_401(
    tmp_path: Path,
) -> None:
    async with page(tmp_path) as p:
        for path in ("/admin/", "/admin/view/1", "/admin/?state=failed"):
            assert login_redirect(await p.get(path)), path
        form = await p.get("/admin/login")
        assert form.status_code == 200
        assert 'action="/admin/login"' in form.text
        assert 'type="password"' in form.text
        posted = await p.post("/admin/replay-failed", **p.origin)
        assert posted.status_code == 401
        api = await p.http.get(f"{p.base}/admin/")
        assert api.status_code == 401
        assert api.json()["error"] == "unauthorized"
        await p.login()
        assert login_redirect(await p.get("/admin/login"), to="/admin/")


async def test_logging_in_sets_an_httponly_strict_cookie_that_does_not_hold_the_token(
    tmp_path: Path,
) -> None:
    async with page(tmp_path) as p:
        wrong = await p.http.post(
            f"{p.base}/admin/login", data={"token": "guess"}, headers={**HTML, **p.origin}
        )
        assert wrong.status_code == 401
        assert "not the admin token" in wrong.text
        assert "set-cookie" not in wrong.headers

        answer = await p.login()
        assert answer.status_code == 303
        assert answer.headers["location"] == "/admin/"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Path=/admin" in cookie
        assert f"Max-Age={SESSION_S}" in cookie
        assert TOKEN not in cookie

        home = await p.get("/admin/")
        assert home.status_code == 200
        assert 'aria-label="status"' in home.text
        assert "Log out" in home.text
        assert "default-src 'none'" in home.headers["content-security-policy"]
        assert home.headers["x-frame-options"] == "DENY"
        assert home.headers["cache-control"] == "no-store"

        elsewhere = await p.post("/admin/logout", Origin="http://evil.example")
        assert elsewhere.status_code == 403 and "set-cookie" not in elsewhere.headers
        out = await p.post("/admin/logout", **p.origin)
        assert out.status_code == 303
        assert login_redirect(await p.get("/admin/"))


async def test_logging_out_ends_the_session_for_every_copy_of_its_cookie(tmp_path: Path) -> None:
    async with page(tmp_path) as p:
        await p.login()
        captured = p.http.cookies[COOKIE_NAME]
        await p.login()  # a second session, in "another browser"
        other = p.http.cookies[COOKIE_NAME]
        assert captured != other
        p.http.cookies.clear()
        p.http.cookies.set(COOKIE_NAME, captured, domain="127.0.0.1", path="/admin")
        assert (await p.get("/admin/")).status_code == 200
        assert (await p.post("/admin/logout", **p.origin)).status_code == 303

        # The captured value, sent again after the logout, opens nothing.
        p.http.cookies.set(COOKIE_NAME, captured, domain="127.0.0.1", path="/admin")
        assert login_redirect(await p.get("/admin/"))
        assert (await p.http.get(f"{p.base}/admin/")).json()["error"] == "unauthorized"
        assert (await p.post("/admin/replay-failed", **p.origin)).status_code == 401
        assert (await p.get("/admin/login")).status_code == 200  # the form, not a redirect
        # The other session lives on.
        p.http.cookies.clear()
        p.http.cookies.set(COOKIE_NAME, other, domain="127.0.0.1", path="/admin")
        assert (await p.get("/admin/")).status_code == 200


async def test_json_admin_answers_are_not_cached_or_sniffed(tmp_path: Path) -> None:
    async with page(tmp_path) as p:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        answers = [
            await p.http.get(f"{p.base}/admin/events", headers=bearer),
            await p.http.get(f"{p.base}/admin/events/999", headers=bearer),
            await p.http.get(f"{p.base}/admin/events"),  # 401
            await p.http.post(f"{p.base}/admin/replay", headers=bearer, content=b"[]"),
            await p.http.get(f"{p.base}/admin/"),  # the page's JSON 401
            await p.http.post(f"{p.base}/admin/logout", headers={"Origin": "https://evil"}),
        ]
        assert [a.status_code for a in answers] == [200, 404, 401, 400, 401, 403]
        for answer in answers:
            assert answer.headers["content-type"].startswith("application/json")
            assert answer.headers["cache-control"] == "no-store"
            assert answer.headers["x-content-type-options"] == "nosniff"


async def test_a_session_expires_and_a_forged_cookie_is_refused(tmp_path: Path) -> None:
    async with page(tmp_path) as p:
        await p.login()
        assert (await p.get("/admin/")).status_code == 200
        value = p.http.cookies[COOKIE_NAME]
        expires, _, mac = value.partition(".")
        p.http.cookies.clear()
        forged = f"{int(expires) + 10 * SESSION_S}.{mac}"
        p.http.cookies.set(COOKIE_NAME, forged, domain="127.0.0.1", path="/admin")
        assert login_redirect(await p.get("/admin/"))

        p.http.cookies.clear()
        p.http.cookies.set(COOKIE_NAME, value, domain="127.0.0.1", path="/admin")
        assert (await p.get("/admin/")).status_code == 200
        p.clock.now = T0 + SESSION_S + 1
        assert login_redirect(await p.get("/admin/"))


async def test_login_and_form_posts_from_another_origin_are_refused(tmp_path: Path) -> None:
    async with page(tmp_path) as p:
        await p.make_failed(1)
        evil = {"Origin": "https://evil.example"}
        login = await p.http.post(
            f"{p.base}/admin/login", data={"token": TOKEN}, headers={**HTML, **evil}
        )
        assert login.status_code == 403
        assert "set-cookie" not in login.headers

        await p.login()
        for headers in (evil, {}, {"Referer": "https://evil.example/admin/"}, {"Origin": "null"}):
            assert (await p.post("/admin/view/1/replay", **headers)).status_code == 403
            assert (await p.post("/admin/replay-failed", **headers)).status_code == 403
        assert await p.state(1) == "failed"

        same_site = await p.post("/admin/view/1/replay", Referer=f"{p.base}/admin/")
        assert same_site.status_code == 303
        await p.wait_state(1, "synced")

        # The scheme is part of the origin: a plain-HTTP page on this host is another site.
        other_scheme = p.base.replace("http://", "https://")
        for headers in ({"Origin": other_scheme}, {"Referer": f"{other_scheme}/admin/"}):
            assert (await p.post("/admin/replay-failed", **headers)).status_code == 403
        assert await p.state(1) == "synced"

        # Behind a proxy that rewrites Host, the public host comes in X-Forwarded-Host, and
        # the public scheme in X-Forwarded-Proto.
        await p.make_failed(2)
        proxied = {
            "Host": "stagesync.internal:8000",
            "X-Forwarded-Host": "hooks.example.com",
            "Origin": "https://hooks.example.com",
        }
        plain = {**proxied, "X-Forwarded-Proto": "http"}
        assert (await p.post("/admin/replay-failed", **plain)).status_code == 403
        secure = {**proxied, "X-Forwarded-Proto": "https"}
        assert (await p.post("/admin/replay-failed", **secure)).status_code == 303
        await p.wait_state(2, "synced")


async def test_cookies_and_parameters_with_non_ascii_digits_are_refused_not_a_500(
    tmp_path: Path,
) -> None:
    async with page(tmp_path) as p:
        # str.isdigit() is true for '\u00b2', which int() refuses: these were 500s.
        for forged in (b"\xb2.x", b"9" * 5000 + b".x"):
            cookie = {"Cookie": COOKIE_NAME.encode() + b"=" + forged}
            answer = await p.http.get(f"{p.base}/admin/", headers={**HTML, **cookie})
            assert login_redirect(answer)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await p.get("/admin/?replayed=%C2%B2", **bearer)).status_code == 200
        far = await p.get("/admin/?since=9999-12-31T23:59:59.999999Z", **bearer)
        assert far.status_code == 400
        for path in ("abc", "%C2%B2", "9" * 30):
            assert (await p.get(f"/admin/view/{path}", **bearer)).status_code == 404
            assert (await p.post(f"/admin/view/{path}/replay", **bearer)).status_code == 404


async def test_a_bearer_header_opens_the_page_and_its_posts_without_a_cookie(
    tmp_path: Path,
) -> None:
    async with page(tmp_path) as p:
        await p.make_failed(3)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await p.get("/admin/", **bearer)).status_code == 200
        assert login_redirect(await p.get("/admin/", Authorization="Bearer nope"))
        answer = await p.post("/admin/view/1/replay", **bearer)
        assert answer.status_code == 303
        await p.wait_state(1, "synced")


# -- content -------------------------------------------------------------------------


async def test_the_page_lists_failed_events_first_with_the_status_figures_and_filter_links(
    tmp_path: Path,
) -> None:
    async with page(tmp_path) as p:
        await p.make_failed(1, 2)  # events 1, 2
        await p.send([event(3, "lead"), event(4, "other"), {"objectId": "x"}])  # 3, 4, 5
        await p.settled()
        await p.login()

        html = (await p.get("/admin/")).text
        assert html.index('aria-label="failed events"') < html.index('aria-label="event log"')
        assert rows(html, "failed events") == [2, 1]
        assert rows(html, "events") == [5, 4, 3, 2, 1]
        counts = {label: int(n) for n, label in re.findall(
            r'<span class="n">(\d+)</span><span class="label">(\w+)', html)}  # fmt: skip
        assert counts == {
            "pending": 0, "retrying": 0, "synced": 1, "skipped": 1, "failed": 2, "invalid": 1,
        }  # fmt: skip
        assert "Replay all failed" in html
        assert 'href="/admin/?state=failed"' in html
        assert "Title: too long" in html

        synced = (await p.get("/admin/?state=synced")).text
        assert 'aria-label="failed events"' not in synced
        assert rows(synced, "events") == [3]
        contact = (await p.get("/admin/?object_id=2")).text
        assert rows(contact, "events") == [2]

        bad = await p.get("/admin/?state=gone")
        assert bad.status_code == 400
        assert "&#39;state&#39; must be one of" in bad.text


async def test_the_page_pages_through_events_with_an_older_link(tmp_path: Path) -> None:
    async with page(tmp_path) as p:
        await p.send([event(100 + i, "other") for i in range(7)])
        await p.settled()
        await p.login()
        first = (await p.get("/admin/?limit=3")).text
        assert rows(first, "events") == [7, 6, 5]
        older = re.search(r'<a href="([^"]+)">older →</a>', first)
        assert older
        second = (await p.get(older.group(1).replace("&amp;", "&"))).text
        assert rows(second, "events") == [4, 3, 2]


async def test_one_event_shows_its_payload_escaped_and_its_attempts(tmp_path: Path) -> None:
    async with page(tmp_path) as p:
        await p.send([event(9, property_name="jobtitle", property_value="<script>x()</script>")])
        await p.wait_state(1, "skipped")
        await p.login()
        answer = await p.get("/admin/view/1")
        assert answer.status_code == 200
        assert "<script>" not in answer.text
        assert "&lt;script&gt;x()&lt;/script&gt;" in answer.text
        assert "stage-unknown" in answer.text
        assert '"objectId": 9' in unescape(answer.text)
        assert re.search(r'<table class="history".*?state-skipped', answer.text, re.S)
        assert 'action="/admin/view/1/replay"' in answer.text
        assert (await p.get("/admin/view/77")).status_code == 404


async def test_replaying_from_the_page_redirects_to_the_event_which_refreshes_until_closed(
    tmp_path: Path,
) -> None:
    async with page(tmp_path) as p:
        await p.make_failed(5)
        await p.login()
        target = p.ctx.dispatcher.target
        gate = asyncio.Event()
        original = target.upsert_batch

        async def held(requests: list[Any]) -> list[Any]:
            await gate.wait()
            result: list[Any] = await original(requests)
            return result

        target.upsert_batch = held
        with capture_logs() as logs:
            answer = await p.post("/admin/view/1/replay", **p.origin)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/admin/view/1?replayed=1"
        open_page = (await p.get("/admin/view/1?replayed=1")).text
        assert '<meta http-equiv="refresh" content="1">' in open_page
        assert "sent back to pending" in open_page

        again = await p.post("/admin/view/1/replay", **p.origin)
        assert again.status_code == 409
        assert "already queued" in again.text

        gate.set()
        await p.wait_state(1, "synced")
        del target.upsert_batch
        closed_page = (await p.get("/admin/view/1")).text
        assert 'http-equiv="refresh"' not in closed_page
        lines = [e for e in logs if e["event"] == "replay_requested"]
        assert [(line["via"], line["auth"], line["count"]) for line in lines] == [
            ("page", "cookie", 1)
        ]


async def test_replay_all_failed_from_the_page_replays_every_failed_event(tmp_path: Path) -> None:
    async with page(tmp_path) as p:
        await p.make_failed(1, 2, 3)
        await p.send([event(4, "lead")])
        await p.wait_state(4, "synced")
        await p.login()
        with capture_logs() as logs:
            answer = await p.post("/admin/replay-failed", **p.origin)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/admin/?replayed=3"
        for i in (1, 2, 3):
            await p.wait_state(i, "synced")
        assert len(await p.ctx.store.history(4)) == 1
        html = (await p.get("/admin/?replayed=3")).text
        assert "Replayed 3 events" in html
        assert 'aria-label="failed events"' not in html
        [line] = [e for e in logs if e["event"] == "replay_requested"]
        assert line["count"] == 3 and line["filter"]["state"] == "failed"
        assert TOKEN not in repr(logs)


async def test_secrets_echoed_by_the_target_show_nowhere_in_the_api_or_the_page(
    tmp_path: Path,
) -> None:
    async with page(tmp_path) as p:
        target = p.ctx.dispatcher.target

        async def echoed(requests: list[Any]) -> list[Any]:
            message = f"proxy echoed secret={SECRET}&token={quote(TOKEN + '/x', safe='')}"
            return [PermanentError(f"E_{SECRET}", message) for _ in requests]

        target.upsert_batch = echoed
        try:
            await p.send([event(31, "lead")])
            await p.settled()
        finally:
            del target.upsert_batch
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        listed = await p.http.get(f"{p.base}/admin/events?state=failed", headers=bearer)
        (failed,) = listed.json()["events"]
        assert failed["last_error"]["code"] == "E_[redacted]"
        shown = await p.http.get(f"{p.base}/admin/events/{failed['id']}", headers=bearer)
        view = await p.get(f"/admin/view/{failed['id']}", **bearer)
        for text in (listed.text, shown.text, view.text):
            assert SECRET not in text and quote(TOKEN, safe="") not in text
            assert "[redacted]" in text
