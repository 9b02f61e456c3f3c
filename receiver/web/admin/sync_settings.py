"""The admin API of the sync settings and the stage catalogue.

``GET /admin/stages``, ``GET|PUT|DELETE /admin/sync-settings`` and
``GET /admin/sync-settings/history``, behind the admin token. A save names its caller by
the token's fingerprint, never the token; it applies on this instance at once and on the
others at their next poll of the settings' version (within a second).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver.dispatch.sync_settings import SaveResult, save, sync_settings_json
from receiver.hubspot.stages import Catalogue
from receiver.models import SyncValues
from receiver.ops.presenters import iso
from receiver.sync.sync_settings import SettingsProblem, clean_stages, holder_of
from receiver.web.admin.api import api_endpoint, json_body
from receiver.web.admin.params import BadParam, parse_limit
from receiver.web.auth import Caller
from receiver.web.context import AppContext
from receiver.web.numbers import parse_uint
from receiver.web.responses import JSON, error

HISTORY_LIMIT = 100
_FIELDS = ("lead_sync", "contact_sync", "lead_stages", "contact_stages", "version")


async def catalogue_for(ctx: AppContext) -> Catalogue:
    """The stage catalogue, the stage ids in use joining the default one."""
    values = ctx.sync_settings.current.values
    configured = (*ctx.settings.lead_stages, *ctx.settings.contact_stages)
    return await ctx.stages.get(
        ctx.clock(), (*configured, *values.lead_stages, *values.contact_stages)
    )


def stages_json(catalogue: Catalogue, values: SyncValues) -> dict[str, Any]:
    """The ``GET /admin/stages`` document."""
    return {
        "source": catalogue.source,
        "stages": [
            {
                "id": s.id,
                "label": s.label,
                "order": s.order,
                "hidden": s.hidden,
                "sync": holder_of(s.id, values),
            }
            for s in catalogue.stages
        ],
    }


def _bool(doc: dict[str, Any], name: str, current: bool) -> bool:
    value = doc.get(name, current)
    if not isinstance(value, bool):
        raise BadParam(f"'{name}' must be true or false")
    return value


def _stages(doc: dict[str, Any], name: str, current: tuple[str, ...]) -> tuple[str, ...]:
    value = doc.get(name, list(current))
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise BadParam(f"'{name}' must be a list of lifecycle stage ids")
    if any(len(s) > 100 for s in value) or len(value) > 200:
        raise BadParam(f"'{name}' holds too many stages or too long an id")
    return clean_stages(value)


def values_from(doc: dict[str, Any], current: SyncValues) -> tuple[SyncValues, int]:
    """The values a PUT body asks for (a field left out keeps its value) and its version."""
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise BadParam(
            f"unknown field {', '.join(repr(k) for k in unknown)}; the fields are"
            f" {', '.join(_FIELDS)}"
        )
    version = doc.get("version")
    if type(version) is not int or version < 0:
        raise BadParam("'version' must be the version of the settings being changed, an integer")
    values = SyncValues(
        _bool(doc, "lead_sync", current.lead_sync),
        _bool(doc, "contact_sync", current.contact_sync),
        _stages(doc, "lead_stages", current.lead_stages),
        _stages(doc, "contact_stages", current.contact_stages),
    )
    return values, version


def problem_answer(problems: tuple[SettingsProblem, ...]) -> Response:
    """400 with the first problem's code, every problem of that code in the message."""
    code = problems[0].code
    same = [p for p in problems if p.code == code]
    body = {
        "error": code,
        "message": " ".join(p.message for p in same),
        "stages": [p.stage for p in same],
    }
    return JSON(body, status_code=400)


def conflict_answer(ctx: AppContext) -> Response:
    """409: someone saved in between."""
    return error(
        409,
        "version_conflict",
        "The sync settings were changed meanwhile (now version"
        f" {ctx.sync_settings.current.version}); load them again and repeat the change.",
    )


async def save_values(
    ctx: AppContext, values: SyncValues | None, version: int, by: str
) -> SaveResult:
    """Check against the catalogue and save; this instance applies the result at once."""
    await ctx.sync_settings.refresh()
    catalogue = await catalogue_for(ctx)
    known = catalogue.ids() if catalogue.source == "hubspot" else None
    result = await save(ctx.store, ctx.settings, values, version, by, ctx.clock(), known)
    if result.current is not None:
        ctx.sync_settings.use(result.current)
    return result


async def get_stages(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/stages``: the catalogue, each stage with the sync that holds it."""
    await ctx.sync_settings.refresh()
    catalogue = await catalogue_for(ctx)
    return JSON(stages_json(catalogue, ctx.sync_settings.current.values))


async def get_settings(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/sync-settings``: the settings in force."""
    await ctx.sync_settings.refresh()
    return JSON(sync_settings_json(ctx.sync_settings.current))


async def put_settings(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``PUT /admin/sync-settings``: check and save; 400, 409 or the new settings."""
    doc = await json_body(request, '{"lead_sync": true, "version": 3}')
    await ctx.sync_settings.refresh()
    values, version = values_from(doc, ctx.sync_settings.current.values)
    result = await save_values(ctx, values, version, caller.fingerprint)
    if result.problems:
        return problem_answer(result.problems)
    if result.current is None:
        return conflict_answer(ctx)
    return JSON(sync_settings_json(result.current))


async def delete_settings(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``DELETE /admin/sync-settings``: back to the configured values (a history entry)."""
    for _ in range(3):  # a reset is not a change of someone's copy: retry a lost race
        await ctx.sync_settings.refresh()
        version = ctx.sync_settings.current.version
        result = await save_values(ctx, None, version, caller.fingerprint)
        if result.current is not None:
            return JSON(sync_settings_json(result.current))
    return conflict_answer(ctx)


async def get_history(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/sync-settings/history[?limit=N&before=V]``: every change, newest first,
    a page of ``limit`` (default 100) at a time; ``next_before`` asks for the next page."""
    limit = HISTORY_LIMIT
    if "limit" in request.query_params:
        limit = parse_limit(request.query_params["limit"])
    before = None
    if "before" in request.query_params:
        before = parse_uint(request.query_params["before"])
        if not before:
            raise BadParam("'before' must be a settings version, a whole number from 1")
    entries = await ctx.store.sync_settings_history(limit + 1, before)
    more = len(entries) > limit
    entries = entries[:limit]
    return JSON(
        {
            "history": [
                {"version": e.version, "at": iso(e.at), "by": e.by, "changes": e.changes}
                for e in entries
            ],
            "next_before": entries[-1].version if more else None,
        }
    )


def routes() -> list[BaseRoute]:
    """The sync settings API's routes."""
    return [
        Route("/admin/stages", api_endpoint(get_stages), methods=["GET"]),
        Route("/admin/sync-settings", api_endpoint(get_settings), methods=["GET"]),
        Route("/admin/sync-settings", api_endpoint(put_settings), methods=["PUT"]),
        Route("/admin/sync-settings", api_endpoint(delete_settings), methods=["DELETE"]),
        Route("/admin/sync-settings/history", api_endpoint(get_history), methods=["GET"]),
    ]
