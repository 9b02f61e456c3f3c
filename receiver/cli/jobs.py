"""``stagesync backfill`` and ``stagesync reconcile``.

``backfill`` only stores the job, in the database the running service shares, and a
serving instance runs it; ``--wait`` follows it with a progress bar (found, queued,
synced) and ends with the counts. ``reconcile`` runs one pass in this process.
Both need the HubSpot token, as the service does for them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from functools import partial

import httpx

from receiver.cli.store import settings_from_args, with_store
from receiver.dispatch.sync_settings import stages_in_force
from receiver.errors import UpstreamError
from receiver.hubspot.pacer import RequestPacer
from receiver.hubspot.search import ContactSearch
from receiver.jobs.backfill import TOKEN_REQUIRED, BackfillRefused, start_backfill
from receiver.jobs.reconcile import Reconciler
from receiver.models import BackfillJob
from receiver.ops.metrics import Metrics
from receiver.ops.presenters import iso
from receiver.settings import Settings
from receiver.store.base import EventStore
from receiver.sync.mapping import hubspot_properties, merge_mapping
from receiver.targets.factory import make_target

POLL_S = 0.5
#: How long ``--wait`` lets a job sit untaken before saying that no service runs it.
UNTAKEN_HINT_S = 10.0
CLOSED = ("synced", "skipped", "failed", "invalid")


def _refuse_without_token(settings: Settings) -> bool:
    if settings.hubspot_token:
        return False
    print(f"error: {TOKEN_REQUIRED}", file=sys.stderr)
    return True


def run_backfill(settings: Settings, stages: list[str] | None, wait: bool) -> int:
    """Start a backfill (and follow it with ``wait``); the exit status."""
    if _refuse_without_token(settings):
        return 1

    async def work(store: EventStore) -> int:
        try:
            synced = partial(stages_in_force, store, settings)
            job = await start_backfill(store, settings, stages, time.time(), synced)
        except BackfillRefused as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        print(f"backfill {job.id} started: stages {', '.join(job.stages)}")
        if not wait:
            return 0
        return await follow(store, job)

    return asyncio.run(with_store(settings, work))


async def follow(store: EventStore, job: BackfillJob) -> int:
    """Show the job's progress until it ended and its events are processed."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]backfill {task.fields[job]}"),
        BarColumn(),
        TextColumn("found {task.fields[found]}  queued {task.fields[queued]}"),
        TextColumn("synced {task.completed:.0f}"),
        TimeElapsedColumn(),
    )
    started = time.monotonic()
    hinted = False
    current: BackfillJob | None = job
    outcomes: dict[str, int] = {}
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("backfill", total=None, job=job.id, found=0, queued=0)
        while True:
            current = await store.get_backfill(job.id)
            if current is None:
                print(f"error: backfill {job.id} is gone", file=sys.stderr)
                return 1
            outcomes = await store.backfill_outcomes(current)
            done = sum(outcomes.get(s, 0) for s in CLOSED)
            total = current.queued if current.state != "running" else None
            bar.update(task, completed=outcomes.get("synced", 0), total=total,
                       found=current.found, queued=current.queued)  # fmt: skip
            if current.state != "running" and done >= current.queued:
                break
            untaken = current.owner is None and current.pages == 0
            if untaken and not hinted and time.monotonic() - started > UNTAKEN_HINT_S:
                bar.console.print(
                    "no running `stagesync serve` (with a HubSpot token) has taken the job yet"
                )
                hinted = True
            await asyncio.sleep(POLL_S)
    counts = ", ".join(f"{s} {outcomes.get(s, 0)}" for s in ("synced", "skipped", "failed"))
    print(
        f"backfill {current.id} {current.state}: found {current.found}, queued {current.queued},"
        f" {counts}, {current.pages} pages, {current.calls} HubSpot calls"
    )
    if current.error:
        print(f"error: {current.error}", file=sys.stderr)
    return 0 if current.state == "done" else 1


def run_reconcile(settings: Settings) -> int:
    """One reconciliation pass in this process; the exit status."""
    if _refuse_without_token(settings):
        return 1
    token = settings.hubspot_token
    assert token is not None

    async def work(store: EventStore) -> int:
        async with httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0)) as http:
            target = make_target(
                settings.target,
                settings.target_settings,
                store=store,
                http=http,
                metrics=Metrics(),
            )
            try:
                mappings = [
                    merge_mapping(target.default_mapping(kind), settings.mapping.get(kind, {}))
                    for kind in ("lead", "contact")
                ]
            finally:
                await target.aclose()
            search = ContactSearch(
                http=http,
                base_url=settings.hubspot_api_url,
                token=token,
                pacer=RequestPacer(settings.hubspot_rate_limit, 10.0),
            )
            reconciler = Reconciler(
                store=store,
                search=search,
                properties=hubspot_properties(*mappings),
                stages=partial(stages_in_force, store, settings),
                interval_s=settings.reconcile_interval_s,
                owner="cli",
            )
            try:
                result = await reconciler.run_pass()
            except UpstreamError as exc:
                print(f"error: HubSpot search failed: {exc.code}: {exc.message}", file=sys.stderr)
                return 1
        if result is None:
            print("error: another instance is running a reconciliation pass", file=sys.stderr)
            return 1
        print(
            f"reconcile: found {result.found} contact(s) modified since {iso(result.since)},"
            f" queued {result.queued} ({result.found - result.queued} already queued),"
            f" {result.calls} HubSpot call(s)"
        )
        return 0

    return asyncio.run(with_store(settings, work))


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``backfill`` and ``reconcile`` to the ``stagesync`` parser."""

    def backfill(args: argparse.Namespace) -> int:
        return run_backfill(settings_from_args(args, need_secret=False), args.stage, args.wait)

    def reconcile(args: argparse.Namespace) -> int:
        return run_reconcile(settings_from_args(args, need_secret=False))

    p = sub.add_parser("backfill", help="sync the existing contacts of the synced stages")
    p.add_argument("--config", help="TOML settings file (or STAGESYNC_CONFIG)")
    p.add_argument(
        "--stage",
        action="append",
        metavar="S",
        help="a lifecycle stage to backfill (repeatable; default: every synced stage)",
    )
    p.add_argument("--wait", action="store_true", help="show progress until it is done")
    p.set_defaults(fn=backfill)
    p = sub.add_parser("reconcile", help="run one reconciliation pass now")
    p.add_argument("--config", help="TOML settings file (or STAGESYNC_CONFIG)")
    p.set_defaults(fn=reconcile)
