"""The *Sync settings* screen of the admin page, and *Replay all* of a failure group.

Server-rendered forms that work without JavaScript: each sync has an on/off switch and
its stages as a list of checkboxes labelled as HubSpot labels them. A stage the other
sync holds is shown disabled, with a note naming that sync; the server applies the same
rule to what is posted (a forged post gets the error page). A save that adds stages
offers a backfill of those stages when this service has one (``POST /admin/backfill``).
"""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.dispatch.sync_settings import stages_in_force
from receiver.jobs.backfill import BackfillRefused, start_backfill
from receiver.models import EventFilter, SyncValues
from receiver.ops.logging import get_logger
from receiver.sync.sync_settings import SYNC_NAMES, added_stages, clean_stages, holder_of
from receiver.web.admin.actions import audit
from receiver.web.admin.forms import read_form, read_form_lists
from receiver.web.admin.page import page_endpoint, refuse, render
from receiver.web.admin.params import BadParam, filter_json
from receiver.web.admin.sync_settings import catalogue_for, save_values
from receiver.web.auth import Caller
from receiver.web.context import AppContext
from receiver.web.numbers import parse_uint

log = get_logger("receiver.web.admin.sync_settings_page")

BACKFILL_PATH = "/admin/sync/backfill"
MAX_FIELDS = 500
#: A settings form names each picked stage once: room for hundreds of stage ids.
SAVE_FORM_BYTES = 64 * 1024


def _backfill_available(ctx: AppContext) -> bool:
    return ctx.backfills is not None  # a backfill reads HubSpot: it needs the token


async def _screen(
    request: Request,
    ctx: AppContext,
    caller: Caller,
    *,
    shown: SyncValues | None = None,
    problems: list[str] | None = None,
    code: int = 200,
) -> Response:
    current = ctx.sync_settings.current
    values = shown or current.values
    catalogue = await catalogue_for(ctx)
    syncs = []
    for kind, other in (("lead", "contact"), ("contact", "lead")):
        picked = set(getattr(values, f"{kind}_stages"))
        rows = []
        for stage in catalogue.stages:
            holder = holder_of(stage.id, values)
            taken = holder == other
            if stage.hidden and stage.id not in picked and not taken:
                continue  # a hidden stage is listed once someone picked it
            rows.append(
                {
                    "id": stage.id,
                    "label": stage.label,
                    "hidden": stage.hidden,
                    "checked": stage.id in picked,
                    "disabled": taken,
                    "note": f"held by {SYNC_NAMES[other]}" if taken else "",
                }
            )
        syncs.append(
            {
                "kind": kind,
                "title": SYNC_NAMES[kind],
                "on": getattr(values, f"{kind}_sync"),
                "stages": rows,
            }
        )
    q = request.query_params
    added = [s for s in q.get("added", "").split(",") if s]
    return render(
        "sync_settings.html",
        code,
        caller=caller,
        current=current,
        syncs=syncs,
        catalogue_source=catalogue.source,
        problems=problems or [],
        saved=parse_uint(q.get("saved", "")),
        added=added,
        labels={s.id: s.label for s in catalogue.stages},
        backfill=_backfill_available(ctx),
        backfill_path=BACKFILL_PATH,
    )


async def show(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/sync``: the screen."""
    await ctx.sync_settings.refresh()
    return await _screen(request, ctx, caller)


def _first(form: dict[str, list[str]], name: str) -> str:
    return form.get(name, [""])[0]


def _form_values(form: dict[str, list[str]]) -> tuple[SyncValues, int]:
    version = parse_uint(_first(form, "version"))
    if version is None:
        raise BadParam("the form lacks the version of the settings it changes; reload the page")
    return (
        SyncValues(
            _first(form, "lead_sync") == "on",
            _first(form, "contact_sync") == "on",
            clean_stages(form.get("lead_stages", [])),
            clean_stages(form.get("contact_stages", [])),
        ),
        version,
    )


async def save(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``POST /admin/sync``: check and save the form, then show the screen again."""
    values, version = _form_values(
        await read_form_lists(request, max_fields=MAX_FIELDS, limit=SAVE_FORM_BYTES)
    )
    await ctx.sync_settings.refresh()
    result = await save_values(ctx, values, version, caller.fingerprint)
    if result.problems:
        return await _screen(
            request, ctx, caller, shown=values, problems=[p.message for p in result.problems],
            code=400,
        )  # fmt: skip
    if result.current is None:
        message = (
            "Someone changed the sync settings meanwhile; they are shown as they are now."
            " Make your change again."
        )
        return await _screen(request, ctx, caller, problems=[message], code=409)
    added = added_stages(result.previous, values) if result.previous is not None else []
    target = f"/admin/sync?saved={result.current.version}"
    if added:
        target += "&added=" + ",".join(added)
    return RedirectResponse(target, status_code=303)


async def replay_group(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``POST /admin/replay-group``: replay every failed event with one error code."""
    code = (await read_form(request)).get("error_code")
    if not isinstance(code, str) or not code or len(code) > 200:
        return refuse(request, 400, "bad_request", "Name the error code of the group.")
    flt = EventFilter(state="failed", error_code=code)
    count = await ctx.store.replay_matching(flt, ctx.clock())
    audit(caller, "filter", count, filter=filter_json(flt), via="page")
    return RedirectResponse(f"/admin/?replayed={count}", status_code=303)


async def start_backfill_of(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``POST /admin/sync/backfill``: the screen's offer, a backfill of the stages added."""
    form = await read_form_lists(request, max_fields=MAX_FIELDS, limit=SAVE_FORM_BYTES)
    stages = clean_stages(form.get("stages", []))
    if not stages:
        return refuse(request, 400, "bad_request", "Name the stages to backfill.")
    try:
        synced = partial(stages_in_force, ctx.store, ctx.settings)
        job = await start_backfill(ctx.store, ctx.settings, stages, ctx.clock(), synced)
    except BackfillRefused as exc:
        return refuse(request, exc.status, exc.code, exc.message)
    log.info(
        "backfill_requested",
        token_fingerprint=caller.fingerprint,
        auth=caller.via,
        job=job.id,
        stages=list(job.stages),
    )
    if ctx.backfills is not None:
        ctx.backfills.wake()
    return RedirectResponse(f"/admin/?backfill={job.id}", status_code=303)


def routes() -> list[BaseRoute]:
    """The screen's routes."""
    return [
        Route("/admin/sync", page_endpoint(show), methods=["GET"]),
        Route(
            "/admin/sync",
            page_endpoint(save, post=True, form_limit=SAVE_FORM_BYTES),
            methods=["POST"],
        ),
        Route(BACKFILL_PATH, page_endpoint(start_backfill_of, post=True), methods=["POST"]),
        Route("/admin/replay-group", page_endpoint(replay_group, post=True), methods=["POST"]),
    ]
