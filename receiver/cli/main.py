"""The ``stagesync`` command line.

Commands other than ``serve`` and ``send-sample`` work on the database directly, so
they also work while the server is down; a running server picks up a replay within a
second. They do not need the HubSpot client secret. Only ``serve`` creates a SQLite
database: the others refuse a file that does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from receiver.cli import jobs, sync_settings
from receiver.cli.serve import DEMO_SECRET, base_url, serve
from receiver.cli.store import PLACEHOLDER_SECRET, database_label, settings_from_args, with_store
from receiver.dispatch.sync_settings import status_fields
from receiver.errors import ConfigError
from receiver.models import STATES, EventFilter, StoredEvent
from receiver.ops.presenters import event_json, history_json, iso, record_json
from receiver.ops.status import build_status
from receiver.store.base import EventStore, split_replayable
from receiver.web.admin.params import DEFAULT_LIMIT, MAX_LIMIT, BadParam, parse_time
from receiver.web.numbers import MAX_INT64, parse_uint
from receiver.web.webhook import WEBHOOK_PATH

#: The smallest replay by filter that shows a progress bar on a terminal.
PROGRESS_FROM = 200

_settings = settings_from_args


def _when(value: str) -> float:
    """An ISO date or date-time (UTC when no offset is given) as unix seconds."""
    try:
        return parse_time(value, value)
    except BadParam as exc:  # "'<value>' must be ...": argparse names the option
        raise argparse.ArgumentTypeError(str(exc)) from None


def _whole_number(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_uint(text, high)  # ASCII digits only: int() fails on '²'
        if value is None or value < low:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high}, not {text!r}"
            )
        return value

    return parse


_event_id = _whole_number(1, MAX_INT64)
_object_id = _whole_number(0, MAX_INT64)  # as the admin API's object_id filter
_limit = _whole_number(1, MAX_LIMIT)
# Port 0 would listen on a port chosen by the system that nothing reports.
_port = _whole_number(1, 65535)


def _print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc).decode() + "\n")


# -- commands --------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    return serve(_settings(args), args.host, args.port)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print("configuration OK")
    print(f"  target:          {settings.target}")
    print(f"  database:        {database_label(settings.database_url)}")
    print(f"  lead stages:     {', '.join(settings.lead_stages)}")
    print(f"  contact stages:  {', '.join(settings.contact_stages)}")
    print(
        f"  syncs:           lead {_on(settings.lead_sync)}, contact {_on(settings.contact_sync)}"
    )
    print(f"  alerts:          {'on' if settings.alert_webhook_url else 'off'}")
    print(f"  hubspot fetch:   {'on' if settings.hubspot_token else 'off (webhook data only)'}")
    if not settings.hubspot_token:
        reconcile = "off (needs the HubSpot token)"
    elif settings.reconcile_interval_s > 0:
        reconcile = f"every {settings.reconcile_interval_s:g} s"
    else:
        reconcile = "off (RECONCILE_INTERVAL_S=0)"
    print(f"  reconcile:       {reconcile}")
    print(f"  public url:      {settings.public_url or '(from the request)'}")
    print(f"  admin api:       {'enabled' if settings.admin_token else 'disabled (no token)'}")
    print(f"  on delete:       {settings.on_delete}")
    print(f"  max attempts:    {settings.max_attempts}")
    print(f"  listens on:      {base_url(settings.host, settings.port)} ({settings.host})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args, need_secret=False)

    async def work(store: EventStore) -> int:
        doc = await build_status(
            store, settings, time.time(), extra=await status_fields(store, settings)
        )
        if args.json:
            _print_json(doc)
            return 0
        print(f"stagesync {doc['version']}  target={doc['target']}  database={doc['database']}")
        for state in STATES:
            print(f"  {state:<9} {doc['counts'][state]:>10}")
        for reason, n in sorted(doc["skipped_by_reason"].items()):
            print(f"    skipped {reason or '(none)'}: {n}")
        age = doc["oldest_pending_age_s"]
        # The same words as the admin page for an empty backlog and no sync yet.
        print(f"  oldest pending age: {'none' if age is None else f'{age} s'}")
        print(f"  last sync:          {doc['last_sync_at'] or 'never'}")
        print(f"  lead stages:        {', '.join(doc['lead_stages'])}")
        print(f"  contact stages:     {', '.join(doc['contact_stages'])}")
        sync = doc["sync_settings"]
        print(
            f"  sync settings:      version {sync['version']} ({sync['source']}),"
            f" lead sync {'on' if sync['lead_sync'] else 'off'},"
            f" contact sync {'on' if sync['contact_sync'] else 'off'}"
        )
        reconcile = doc["reconcile"]
        print(
            f"  reconcile:          last {reconcile['last_run_at'] or 'never'},"
            f" watermark {reconcile['watermark'] or 'none'}, found {reconcile['found']}"
        )
        job = doc["backfill"]
        running = f"{job['id']}: found {job['found']}, queued {job['queued']}" if job else "none"
        print(f"  backfill running:   {running}")
        return 0

    return asyncio.run(with_store(settings, work))


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
            event_id = _event_id(rest[1])
        except argparse.ArgumentTypeError as exc:
            print(f"usage: stagesync events show ID (the ID {exc})", file=sys.stderr)
            return 2
    settings = _settings(args, need_secret=False)

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
                _print_json(event_json(event))
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
    settings = _settings(args, need_secret=False)

    async def work(store: EventStore) -> int:
        for record in await store.list_records(args.kind):
            if args.json:
                _print_json(record_json(record))
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
    settings = _settings(args, need_secret=False)

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
    settings = _settings(args, need_secret=False)
    flt = EventFilter(state=args.state, until=args.before)

    async def work(store: EventStore) -> int:
        if args.dry_run:
            print(f"{await store.count_matching(flt)} event(s) would be purged")
            return 0
        print(f"purged {await store.purge(flt)} event(s)")
        return 0

    return asyncio.run(with_store(settings, work))


def cmd_send_sample(args: argparse.Namespace) -> int:
    from receiver.hubspot.sample import send_sample

    # Another problem of the settings is reported rather than signing with a wrong secret.
    settings = _settings(args, need_secret=False)
    secret = args.secret or settings.hubspot_client_secret.get_secret_value()
    if secret == PLACEHOLDER_SECRET:
        secret = DEMO_SECRET
        print("no client secret configured: signing with the demo secret", file=sys.stderr)
    url = args.url or base_url(settings.host, settings.port) + WEBHOOK_PATH
    return send_sample(url, secret, args.stage, args.object_id)


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="stagesync",
        description="stagesync: HubSpot contact webhooks to a CRM, as Leads or Contacts"
        " by lifecycle stage.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> Any:
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", help="TOML settings file (or STAGESYNC_CONFIG)")
        p.set_defaults(fn=fn)
        return p

    def filters(p: Any) -> None:
        p.add_argument("--state", choices=STATES)
        p.add_argument("--object-id", type=_object_id, metavar="N")
        p.add_argument("--since", type=_when, help="ISO date or date-time, UTC by default")
        p.add_argument("--until", type=_when)

    p = command("serve", cmd_serve, "run the service")
    p.add_argument(
        "--host",
        help="address to listen on, 0.0.0.0 for every interface"
        " (default: STAGESYNC_HOST, else 127.0.0.1)",
    )
    p.add_argument("--port", type=_port, help="1 to 65535 (default: STAGESYNC_PORT, else 8000)")
    command("check-config", cmd_check_config, "validate the settings and print a summary")
    p = command("status", cmd_status, "counts per state, backlog age, last sync")
    p.add_argument("--json", action="store_true")
    p = command("events", cmd_events, "list events, or 'events show ID'")
    p.add_argument("rest", nargs="*", metavar="show ID")
    filters(p)
    p.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"newest N events, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = command("records", cmd_records, "what the dry-run target holds")
    p.add_argument("--kind", choices=("lead", "contact"))
    p.add_argument("--json", action="store_true")
    p = command("replay", cmd_replay, "send events back to pending")
    p.add_argument("ids", nargs="*", type=_event_id, metavar="ID")
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
    p.add_argument("--before", type=_when, required=True)
    p.add_argument("--dry-run", action="store_true", help="only count")
    p = command("send-sample", cmd_send_sample, "send a signed sample batch to a server")
    p.add_argument(
        "--url",
        help="the service's webhook URL (default: http://STAGESYNC_HOST:STAGESYNC_PORT"
        f"{WEBHOOK_PATH}, as serve listens, else http://127.0.0.1:8000{WEBHOOK_PATH})",
    )
    p.add_argument(
        "--stage",
        default="lead",
        help="lifecycle stage the sample contact moves to (default: %(default)s)",
    )
    p.add_argument("--object-id", type=_object_id, metavar="N")
    p.add_argument("--secret", help="client secret to sign with (default: the configured one)")
    sync_settings.register(command)
    jobs.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; configuration problems print one line each and exit 1."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.fn(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except ConfigError as exc:
        print("configuration problems:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`stagesync events | head -1`): what it wanted, it has.
        # Standard output points at /dev/null so the flush at exit fails no more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
