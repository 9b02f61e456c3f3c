"""``stagesync events``, ``records``, ``replay`` and ``purge``: the stored events and
the dry-run target's records, read and changed in the database directly."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from receiver.cli import arguments
from receiver.cli.arguments import print_json
from receiver.cli.store import settings_from_args, with_store
from receiver.models import STATES, EventFilter, StoredEvent
from receiver.ops.presenters import event_json, history_json, iso, record_json
from receiver.store.base import EventStore, split_replayable
from receiver.web.admin.params import DEFAULT_LIMIT, MAX_LIMIT

#: The smallest replay by filter that shows a progress bar on a terminal.
PROGRESS_FROM = 200


def _filter(args: argparse.Namespace) -> EventFilter:
    return EventFilter(
        state=args.state, object_id=args.object_id, since=args.since, until=args.until
    )


def cmd_events(args: argparse.Namespace) -> int:
    rest = args.rest or []
    if rest and (rest[0] != "show" or len(rest) != 2):
        print("usage: stagesync events show ID", file=sys.stderr)
        return 2
    if rest:
        try:
            event_id = arguments.event_id(rest[1])
        except argparse.ArgumentTypeError as exc:
            print(f"usage: stagesync events show ID (the ID {exc})", file=sys.stderr)
            return 2
    settings = settings_from_args(args, need_secret=False)

    async def show(store: EventStore) -> int:
        event = await store.get_event(event_id)
        if event is None:
            print(f"no event with id {event_id}", file=sys.stderr)
            return 1
        doc = event_json(event)
        doc["history"] = history_json(await store.history(event.id))
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0

    async def listing(store: EventStore) -> int:
        events = await store.list_events(_filter(args), args.limit)
        for event in events:
            if args.json:
                print_json(event_json(event))
                continue
            err = f"  {event.last_error_code}: {event.last_error_message}" if event.state in (
                "failed", "retrying", "invalid") else ""  # fmt: skip
            print(
                f"{event.id:>8}  {iso(event.received_at)}  {event.state:<8} "
                f"{(event.reason or ''):<17} contact={event.object_id} "
                f"{event.subscription_type or '-'} stage={event.stage or '-'} "
                f"attempts={event.attempts}{_since_replay(event)}{err}"
            )
        return 0

    return asyncio.run(with_store(settings, show if rest else listing))


def _since_replay(event: StoredEvent) -> str:
    since = event.attempts - event.attempt_floor
    return f" ({since} since replay)" if since != event.attempts else ""


def cmd_records(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, need_secret=False)

    async def work(store: EventStore) -> int:
        for record in await store.list_records(args.kind):
            if args.json:
                print_json(record_json(record))
            else:
                fields = " ".join(f"{k}={v}" for k, v in record.fields.items() if v is not None)
                print(
                    f"{record.hubspot_id:>12}  {record.kind:<7} {iso(record.upserted_at)}  {fields}"
                )
        return 0

    return asyncio.run(with_store(settings, work))


def cmd_replay(args: argparse.Namespace) -> int:
    filtered = (args.state, args.object_id, args.since, args.until)
    # "is not None": --since 1970-01-01 is 0.0, and must not be taken for no filter.
    if args.ids and any(value is not None for value in filtered):
        print("give event ids or filters, not both", file=sys.stderr)
        return 2
    if not args.ids and not args.state:
        print("give event ids, or --state (e.g. --state failed) with filters", file=sys.stderr)
        return 2
    if args.state in ("pending", "retrying", "invalid"):
        print("only synced, skipped and failed events can be replayed", file=sys.stderr)
        return 2
    settings = settings_from_args(args, need_secret=False)

    ids = list(dict.fromkeys(args.ids))  # an id given twice is still one event

    async def by_ids(store: EventStore) -> int:
        if args.dry_run:
            return await preview(store)
        refusals = await store.replay(ids, time.time())
        for refusal in refusals:
            print(f"event {refusal.event_id}: not replayed, {refusal.reason}", file=sys.stderr)
        print(f"replayed {len(ids) - len(refusals)} event(s)")
        return 1 if refusals else 0

    async def preview(store: EventStore) -> int:
        # The store's own rule on what a replay refuses, applied to the current states;
        # the exit status is the one the real replay would have.
        states = {}
        for event_id in ids:
            event = await store.get_event(event_id)
            if event is not None:
                states[event_id] = event.state
        refusals, ok = split_replayable(ids, states)
        for refusal in refusals:
            print(
                f"event {refusal.event_id}: would not be replayed, {refusal.reason}",
                file=sys.stderr,
            )
        print(f"{len(ok)} event(s) would be replayed")
        return 1 if refusals else 0

    async def by_filter(store: EventStore) -> int:
        flt = _filter(args)
        total = await store.count_matching(flt)
        if args.dry_run:
            print(f"{total} event(s) would be replayed")
            return 0
        from rich.console import Console
        from rich.progress import Progress

        # On a terminal, a bar from a few hundred events; piped, only the summary line.
        console = Console(stderr=True)
        shown = console.is_terminal and total >= PROGRESS_FROM
        with Progress(console=console, transient=True, disable=not shown) as bar:
            task = bar.add_task("replaying", total=total)
            count = await store.replay_matching(
                flt, time.time(), progress=lambda done: bar.update(task, completed=done)
            )
        print(f"replayed {count} event(s)")
        return 0

    return asyncio.run(with_store(settings, by_ids if args.ids else by_filter))


def cmd_purge(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, need_secret=False)
    flt = EventFilter(state=args.state, until=args.before)

    async def work(store: EventStore) -> int:
        if args.dry_run:
            print(f"{await store.count_matching(flt)} event(s) would be purged")
            return 0
        print(f"purged {await store.purge(flt)} event(s)")
        return 0

    return asyncio.run(with_store(settings, work))


def register(command: Callable[..., Any]) -> None:
    """Add the event commands through ``command(name, fn, help)`` of the main parser."""

    def filters(p: Any) -> None:
        p.add_argument("--state", choices=STATES)
        p.add_argument("--object-id", type=arguments.object_id, metavar="N")
        p.add_argument("--since", type=arguments.when, help="ISO date or date-time, UTC by default")
        p.add_argument("--until", type=arguments.when)

    p = command("events", cmd_events, "list events, or 'events show ID'")
    p.add_argument("rest", nargs="*", metavar="show ID")
    filters(p)
    p.add_argument(
        "--limit",
        type=arguments.limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"newest N events, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = command("records", cmd_records, "what the dry-run target holds")
    p.add_argument("--kind", choices=("lead", "contact"))
    p.add_argument("--json", action="store_true")
    p = command("replay", cmd_replay, "send events back to pending")
    p.add_argument("ids", nargs="*", type=arguments.event_id, metavar="ID")
    filters(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="replay nothing: count what would be replayed (with IDs, also name the"
        " events that would be refused, and exit 1 if any would be)",
    )
    p = command("purge", cmd_purge, "delete events, e.g. old failed ones")
    # Open events are acknowledged work still to do: they are never purged.
    p.add_argument("--state", choices=("synced", "skipped", "failed", "invalid"), required=True)
    p.add_argument("--before", type=arguments.when, required=True)
    p.add_argument("--dry-run", action="store_true", help="only count")
