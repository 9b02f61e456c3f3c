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

from receiver.cli import events, jobs, sync_settings
from receiver.cli.arguments import object_id, port, print_json
from receiver.cli.serve import DEMO_SECRET, base_url, serve
from receiver.cli.store import PLACEHOLDER_SECRET, database_label, settings_from_args, with_store
from receiver.dispatch.sync_settings import status_fields
from receiver.errors import ConfigError
from receiver.models import STATES
from receiver.ops.status import build_status
from receiver.store.base import EventStore
from receiver.web.webhook import WEBHOOK_PATH

# -- commands --------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    return serve(settings_from_args(args), args.host, args.port)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
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
    settings = settings_from_args(args, need_secret=False)

    async def work(store: EventStore) -> int:
        doc = await build_status(
            store, settings, time.time(), extra=await status_fields(store, settings)
        )
        if args.json:
            print_json(doc)
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


def cmd_send_sample(args: argparse.Namespace) -> int:
    from receiver.hubspot.sample import send_sample

    # Another problem of the settings is reported rather than signing with a wrong secret.
    settings = settings_from_args(args, need_secret=False)
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

    p = command("serve", cmd_serve, "run the service")
    p.add_argument(
        "--host",
        help="address to listen on, 0.0.0.0 for every interface"
        " (default: STAGESYNC_HOST, else 127.0.0.1)",
    )
    p.add_argument("--port", type=port, help="1 to 65535 (default: STAGESYNC_PORT, else 8000)")
    command("check-config", cmd_check_config, "validate the settings and print a summary")
    p = command("status", cmd_status, "counts per state, backlog age, last sync")
    p.add_argument("--json", action="store_true")
    events.register(command)
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
    p.add_argument("--object-id", type=object_id, metavar="N")
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
