"""The admin API of backfills: start one, list them, show one, cancel one.

Starting only stores the job; a serving instance with a HubSpot token runs it (see
:mod:`receiver.jobs.backfill`). Starting and cancelling leave a ``backfill_requested``
audit line naming the caller by token fingerprint.
"""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver.dispatch.sync_settings import stages_in_force
from receiver.jobs.backfill import BackfillRefused, start_backfill
from receiver.ops.logging import get_logger
from receiver.ops.status import backfill_json
from receiver.web.admin.api import api_endpoint, json_body
from receiver.web.admin.params import MAX_ID, BadParam
from receiver.web.auth import Caller
from receiver.web.context import AppContext
from receiver.web.numbers import parse_uint
from receiver.web.responses import JSON, error

log = get_logger("receiver.web.admin.backfills")

LIST_LIMIT = 50


def _stages(doc: dict[str, object]) -> list[str] | None:
    unknown = sorted(set(doc) - {"stages"})
    if unknown:
        raise BadParam(
            f"unknown field {', '.join(repr(k) for k in unknown)}; the body takes 'stages'"
        )
    stages = doc.get("stages")
    if stages is None:
        return None
    if not isinstance(stages, list) or not all(isinstance(s, str) and s for s in stages):
        raise BadParam("'stages' must be a list of lifecycle stage ids, like [\"lead\"]")
    return list(stages)


async def start(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``POST /admin/backfill``: ``202 {"id": N}``; 400 without a token, 409 if one runs."""
    stages = _stages(await json_body(request, '{"stages": ["lead", "customer"]}'))
    try:
        synced = partial(stages_in_force, ctx.store, ctx.settings)
        job = await start_backfill(ctx.store, ctx.settings, stages, ctx.clock(), synced)
    except BackfillRefused as exc:
        log.info("backfill_requested", token_fingerprint=caller.fingerprint, refused=exc.code)
        return error(exc.status, exc.code, exc.message)
    log.info(
        "backfill_requested",
        token_fingerprint=caller.fingerprint,
        auth=caller.via,
        job=job.id,
        stages=list(job.stages),
    )
    if ctx.backfills is not None:
        ctx.backfills.wake()
    return JSON({"id": job.id}, status_code=202)


async def listing(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/backfills``: the newest backfills first."""
    jobs = await ctx.store.list_backfills(LIST_LIMIT)
    return JSON({"backfills": [backfill_json(job) for job in jobs]})


def _job_id(request: Request) -> int | None:
    return parse_uint(request.path_params["job_id"], MAX_ID)


def _no_job(job_id: int | None) -> Response:
    which = f" {job_id}" if job_id is not None else ""
    return error(404, "not_found", f"There is no backfill{which}.")


async def show(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``GET /admin/backfills/{id}``: one backfill with its counts."""
    job_id = _job_id(request)
    job = await ctx.store.get_backfill(job_id) if job_id is not None else None
    if job is None:
        return _no_job(job_id)
    return JSON(backfill_json(job))


async def cancel(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """``POST /admin/backfills/{id}/cancel``: stops after the current page; 409 if it ended."""
    job_id = _job_id(request)
    before = await ctx.store.get_backfill(job_id) if job_id is not None else None
    if job_id is None or before is None:
        return _no_job(job_id)
    if before.state != "running":
        return error(
            409,
            "backfill_not_running",
            f"Backfill {job_id} is {before.state} already; there is nothing to cancel.",
        )
    job = await ctx.store.cancel_backfill(job_id, ctx.clock())
    log.info("backfill_requested", token_fingerprint=caller.fingerprint, cancel=job_id)
    return JSON(backfill_json(job or before))


def backfill_routes() -> list[BaseRoute]:
    """Routes of the backfill API."""
    return [
        Route("/admin/backfill", api_endpoint(start), methods=["POST"]),
        Route("/admin/backfills", api_endpoint(listing), methods=["GET"]),
        Route("/admin/backfills/{job_id}", api_endpoint(show), methods=["GET"]),
        Route("/admin/backfills/{job_id}/cancel", api_endpoint(cancel), methods=["POST"]),
    ]
