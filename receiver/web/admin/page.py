"""The event-log page under ``/admin/``: server-rendered Jinja2, plain HTML and CSS, no JS.

Access takes the admin token as a bearer header, or through the login form, which sets
an HttpOnly, ``SameSite=Strict`` cookie holding a signed expiry and session id (never the
token); the database remembers the session until its logout (see
:mod:`receiver.web.auth`). Form posts made with the cookie must also come from this
origin, scheme included (``Origin``/``Referer``), and their bodies are read with a limit
(:mod:`receiver.web.admin.forms`).
Pages showing an open event refresh themselves with a ``<meta>`` tag until it closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from receiver.dispatch.sync_settings import status_fields_of
from receiver.models import OPEN_STATES, REPLAYABLE_STATES, STATES, EventFilter
from receiver.ops.logging import get_logger
from receiver.ops.presenters import event_json, history_json, iso, shown_raw
from receiver.ops.status import backfill_json, build_status
from receiver.store.health import STORAGE_UNAVAILABLE, storage_failure
from receiver.web.admin.actions import (
    admin_json,
    audit,
    ctx_of,
    no_event_message,
    page_of,
    path_event_id,
    replay_one,
)
from receiver.web.admin.failures import failure_groups_json
from receiver.web.admin.forms import MAX_FORM_BYTES, FormRefused, read_body, read_form
from receiver.web.admin.params import BadParam, filter_json, parse_filter, parse_limit
from receiver.web.auth import (
    COOKIE_NAME,
    NO_TOKEN_MESSAGE,
    SESSION_S,
    Caller,
    admin_token,
    authenticate,
    issue_session,
    same_origin,
    token_matches,
)
from receiver.web.context import AppContext
from receiver.web.numbers import parse_uint
from receiver.web.responses import error

log = get_logger("receiver.web.admin.page")

FAILED_FIRST = 20
#: Backfills the page lists: the running one and the latest ended ones.
RECENT_BACKFILLS = 5
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_env = Environment(
    loader=PackageLoader("receiver.web.admin", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _short_time(value: str | None) -> str:
    """``2026-01-01T00:00:00.000Z`` as ``2026-01-01 00:00:00``: the table's compact form."""
    return value[:19].replace("T", " ") if value else "–"


_env.filters["short_time"] = _short_time
_env.filters["iso_time"] = lambda ts: _short_time(iso(ts))
_env.filters["stage_label"] = lambda stage, labels: labels.get(stage, stage)


def render(name: str, code: int = 200, **values: Any) -> HTMLResponse:
    html = _env.get_template(name).render(states=STATES, replayable=REPLAYABLE_STATES, **values)
    return HTMLResponse(html, status_code=code, headers=SECURITY_HEADERS)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _refuse_form(request: Request, exc: FormRefused) -> Response:
    answer = refuse(request, exc.status, exc.code, exc.message)
    if exc.status == 413:
        # The rest of the body may still be coming: kept alive, the server would read it.
        answer.headers["Connection"] = "close"
    return answer


def refuse(request: Request, status: int, code: str, message: str) -> Response:
    """An error as a page for browsers, as the JSON error shape for everything else."""
    if status == 401 and _wants_html(request):
        if request.method == "GET":
            return RedirectResponse("/admin/login", status_code=303)
        return render("login.html", 401, message=None)
    if _wants_html(request):
        return render("message.html", status, title="stagesync", message=message)
    return admin_json(error(status, code, message))


async def _signed_in(request: Request, ctx: AppContext) -> Caller | Response:
    """The caller, with a cookie's session checked against the database; or the refusal."""
    caller = authenticate(request, ctx.settings, ctx.clock(), allow_cookie=True)
    if isinstance(caller, Response):
        code = "admin_disabled" if caller.status_code == 403 else "unauthorized"
        message = NO_TOKEN_MESSAGE if code == "admin_disabled" else "Log in first."
        return refuse(request, caller.status_code, code, message)
    if caller.session is not None and not await ctx.store.admin_session_open(
        caller.session, ctx.clock()
    ):
        return refuse(request, 401, "unauthorized", "Log in first.")  # logged out
    return caller


async def _guarded(request: Request, answer: Awaitable[Response]) -> Response:
    """``answer``, or the refusal for a form that is too large or a database that failed."""
    try:
        return await answer
    except FormRefused as exc:
        return _refuse_form(request, exc)
    except BadParam as exc:
        return refuse(request, 400, "bad_request", exc.sentence())
    except Exception as exc:
        if not storage_failure(exc):
            raise  # a bug: the app's handler answers the JSON 500
        log.exception("admin_storage_failed", path=request.url.path)
        return refuse(request, 503, "storage_unavailable", STORAGE_UNAVAILABLE)


PageHandler = Callable[[Request, AppContext, Caller], Awaitable[Response]]


def page_endpoint(
    handler: PageHandler, *, post: bool = False, form_limit: int = MAX_FORM_BYTES
) -> Callable[[Request], Awaitable[Response]]:
    """Bearer or cookie authentication, plus the same-origin check on cookie posts.

    A post's body is read up to ``form_limit`` bytes before the handler runs, which may
    then parse it with :func:`~receiver.web.admin.forms.read_form_lists`.
    """

    async def endpoint(request: Request) -> Response:
        return await _guarded(request, run(request, ctx_of(request)))

    async def run(request: Request, ctx: AppContext) -> Response:
        caller = await _signed_in(request, ctx)
        if isinstance(caller, Response):
            return caller
        if post and caller.via == "cookie" and not same_origin(request):
            return refuse(request, 403, "cross_origin", "This form must be sent from this page.")
        if post:
            await read_body(request, form_limit)
        return await handler(request, ctx, caller)

    endpoint.__name__ = handler.__name__
    return endpoint


def _row(event: Any) -> dict[str, Any]:
    doc = event_json(event)
    doc["error_text"] = (
        f"{doc['last_error']['code']}: {doc['last_error']['message']}" if doc["last_error"] else ""
    )
    return doc


def _link(request: Request, **params: Any) -> str:
    """The page's URL with ``params`` (None drops one) and the cursor reset."""
    query = {k: v for k, v in request.query_params.items() if k not in ("cursor", "replayed")}
    query.update({k: str(v) for k, v in params.items() if v is not None})
    for key in [k for k, v in params.items() if v is None]:
        query.pop(key, None)
    return str(URL("/admin/").include_query_params(**query)) if query else "/admin/"


def _replayed(request: Request) -> int | None:
    return parse_uint(request.query_params.get("replayed", ""))


async def index(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/``: status figures, failed events first, then the filtered log."""
    q = request.query_params
    flt = parse_filter(q)
    limit = parse_limit(q.get("limit"))
    cursor = q.get("cursor")
    filtered = any(q.get(k) for k in ("state", "object_id", "since", "until", "error_code"))
    in_force = status_fields_of(ctx.sync_settings.current)
    status = await build_status(ctx.store, ctx.settings, ctx.clock(), ctx.started_at, in_force)
    groups = await failure_groups_json(ctx.store) if status["counts"].get("failed") else []
    failed: list[dict[str, Any]] = []
    more_failed = False
    if not filtered and not cursor and status["counts"].get("failed"):
        rows = await ctx.store.list_events(EventFilter(state="failed"), FAILED_FIRST + 1)
        failed = [_row(e) for e in rows[:FAILED_FIRST]]
        more_failed = len(rows) > FAILED_FIRST
    backfills: list[dict[str, Any]] = []
    if not filtered and not cursor:
        backfills = [backfill_json(j) for j in await ctx.store.list_backfills(RECENT_BACKFILLS)]
    events, next_cursor = await page_of(ctx.store, flt, limit, cursor)
    next_link = None
    if next_cursor:
        next_link = str(URL("/admin/").include_query_params(**{**q, "cursor": next_cursor}))
    return render(
        "index.html",
        status=status,
        failed=failed,
        more_failed=more_failed,
        groups=groups,
        backfills=backfills,
        events=[_row(e) for e in events],
        filtered=filtered,
        flt=filter_json(flt),
        current_state=flt.state,
        state_links={s: _link(request, state=s) for s in STATES},
        all_link=_link(request, state=None),
        failed_link=_link(request, state="failed"),
        next_link=next_link,
        first_page=bool(cursor),
        replayed=_replayed(request),
        query=dict(q),
        caller=caller,
    )


async def view(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/view/{id}``: one event, its payload and its attempts."""
    event_id = path_event_id(request)
    event = await ctx.store.get_event(event_id) if event_id is not None else None
    if event is None:
        return refuse(request, 404, "not_found", no_event_message(event_id))
    return render(
        "event.html",
        event=_row(event),
        raw=orjson.dumps(
            shown_raw(event.raw), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        ).decode(),
        history=history_json(await ctx.store.history(event.id)),
        open=event.state in OPEN_STATES,
        replayed=_replayed(request),
        message=None,
        caller=caller,
    )


async def replay(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``POST /admin/view/{id}/replay``: replay one event, then show it."""
    event_id = path_event_id(request)
    if event_id is None:
        return refuse(request, 404, "not_found", no_event_message(None))
    status, message = await replay_one(ctx, caller, event_id, "page")
    if status == 404:
        return refuse(request, 404, "not_found", message or "")
    if status == 409:
        return refuse(request, 409, "not_replayable", message or "")
    return RedirectResponse(f"/admin/view/{event_id}?replayed=1", status_code=303)


async def replay_failed(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``POST /admin/replay-failed``: replay every failed event."""
    flt = EventFilter(state="failed")
    count = await ctx.store.replay_matching(flt, ctx.clock())
    audit(caller, "filter", count, filter=filter_json(flt), via="page")
    return RedirectResponse(f"/admin/?replayed={count}", status_code=303)


async def login_form(request: Request) -> Response:
    """``GET /admin/login``: the form (the index shows it too when not logged in)."""
    return await _guarded(request, _login_form(request, ctx_of(request)))


async def _login_form(request: Request, ctx: AppContext) -> Response:
    if admin_token(ctx.settings) is None:
        return refuse(request, 403, "admin_disabled", NO_TOKEN_MESSAGE)
    if isinstance(await _signed_in(request, ctx), Caller):
        return RedirectResponse("/admin/", status_code=303)
    return render("login.html", message=None)


async def login(request: Request) -> Response:
    """``POST /admin/login``: check the token, set the session cookie, go to the page."""
    return await _guarded(request, _login(request, ctx_of(request)))


async def _login(request: Request, ctx: AppContext) -> Response:
    token = admin_token(ctx.settings)
    if token is None:
        return refuse(request, 403, "admin_disabled", NO_TOKEN_MESSAGE)
    if not same_origin(request):
        return refuse(request, 403, "cross_origin", "This form must be sent from this page.")
    given = (await read_form(request)).get("token")
    if given is None or not token_matches(given.strip(), token):
        log.warning("admin_login_failed")
        return render("login.html", 401, message="That is not the admin token.")
    now = ctx.clock()
    session = issue_session(token, now)
    await ctx.store.start_admin_session(session.key, session.expires_at, now)
    response = RedirectResponse("/admin/", status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        session.cookie,
        max_age=SESSION_S,
        path="/admin",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def logout(request: Request) -> Response:
    """``POST /admin/logout``: end the session in the database, drop the cookie; from
    this page only."""
    return await _guarded(request, _logout(request, ctx_of(request)))


async def _logout(request: Request, ctx: AppContext) -> Response:
    if not same_origin(request):
        # Another site must not be able to log a user out, any more than in.
        return refuse(request, 403, "cross_origin", "This form must be sent from this page.")
    await read_body(request)
    caller = authenticate(request, ctx.settings, ctx.clock(), allow_cookie=True)
    if isinstance(caller, Caller) and caller.session is not None:
        # The cookie dies here, not only in this browser: a copy of it is refused too.
        await ctx.store.end_admin_session(caller.session)
        log.info("admin_logged_out", token_fingerprint=caller.fingerprint)
    response = RedirectResponse("/admin/", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/admin", httponly=True, samesite="strict")
    return response


def page_routes() -> list[BaseRoute]:
    """The page's routes and its stylesheet."""
    static = Path(__file__).with_name("static")
    return [
        Route("/admin/", page_endpoint(index), methods=["GET"]),
        Route("/admin/login", login_form, methods=["GET"]),
        Route("/admin/login", login, methods=["POST"]),
        Route("/admin/logout", logout, methods=["POST"]),
        Route("/admin/view/{event_id}", page_endpoint(view), methods=["GET"]),
        Route("/admin/view/{event_id}/replay", page_endpoint(replay, post=True), methods=["POST"]),
        Route("/admin/replay-failed", page_endpoint(replay_failed, post=True), methods=["POST"]),
        Mount("/admin/static", StaticFiles(directory=static), name="admin-static"),
    ]
