"""``stagesync sync-settings``: show, set and reset the sync settings in the database.

The same checks as the admin API (a stage in both syncs; with a HubSpot token, a stage
the portal does not have), one line per problem and exit 1. The history names the CLI
as ``"cli"``. A running server applies a change within its poll of the settings' version
(a second).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Collection
from typing import Any

import httpx

from receiver.cli.arguments import print_json
from receiver.cli.store import settings_from_args, with_store
from receiver.dispatch.sync_settings import read_in_force, save, sync_settings_json
from receiver.hubspot.client import HubSpotClient
from receiver.hubspot.pacer import RequestPacer
from receiver.hubspot.stages import StageCatalogue
from receiver.models import SyncValues
from receiver.settings import Settings
from receiver.store.base import EventStore
from receiver.sync.sync_settings import clean_stages

BY = "cli"


def _switch(text: str) -> bool:
    if text.lower() in ("on", "true", "yes"):
        return True
    if text.lower() in ("off", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"must be on or off, not {text!r}")


def _stage_list(text: str) -> tuple[str, ...]:
    return clean_stages(text.split(","))


async def _portal_stages(settings: Settings) -> Collection[str] | None:
    """The portal's stage ids with a token (None when HubSpot cannot be read or there is
    no token: any stage id is then accepted, as the admin API does)."""
    token = settings.hubspot_token
    if not token:
        return None
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0)) as http:
        client = HubSpotClient(
            http=http,
            base_url=settings.hubspot_api_url,
            token=token,
            pacer=RequestPacer(settings.hubspot_rate_limit, 10.0),
        )
        catalogue = await StageCatalogue(client).get(time.time())
    return catalogue.ids() if catalogue.source == "hubspot" else None


def _show(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(doc)
        return
    source = "saved" if doc["source"] == "database" else "configured (environment or TOML)"
    print(f"sync settings: version {doc['version']}, {source}")
    if doc["updated_by"]:
        print(f"  changed:         {doc['updated_at']} by {doc['updated_by']}")
    print(f"  lead sync:       {'on' if doc['lead_sync'] else 'off'}")
    print(f"  lead stages:     {', '.join(doc['lead_stages']) or '(none)'}")
    print(f"  contact sync:    {'on' if doc['contact_sync'] else 'off'}")
    print(f"  contact stages:  {', '.join(doc['contact_stages']) or '(none)'}")


def cmd_sync_settings(args: argparse.Namespace) -> int:
    """Show (no action), ``set`` or ``reset`` the sync settings."""
    settings = settings_from_args(args, need_secret=False)
    if args.action is None:
        return asyncio.run(with_store(settings, _showing(settings, args.json)))
    if args.action == "reset":
        return asyncio.run(with_store(settings, _saving(settings, args, reset=True)))
    given = (args.lead_stages, args.contact_stages, args.lead_sync, args.contact_sync)
    if all(v is None for v in given):
        print(
            "error: name what to change: --lead-stages, --contact-stages, --lead-sync"
            " or --contact-sync",
            file=sys.stderr,
        )
        return 1
    return asyncio.run(with_store(settings, _saving(settings, args, reset=False)))


def _showing(settings: Settings, as_json: bool) -> Callable[[EventStore], Any]:
    async def work(store: EventStore) -> int:
        _show(sync_settings_json(await read_in_force(store, settings)), as_json)
        return 0

    return work


def _saving(settings: Settings, args: argparse.Namespace, reset: bool) -> Callable[..., Any]:
    async def work(store: EventStore) -> int:
        current = await read_in_force(store, settings)
        values: SyncValues | None = None
        if not reset:
            v = current.values
            values = SyncValues(
                v.lead_sync if args.lead_sync is None else args.lead_sync,
                v.contact_sync if args.contact_sync is None else args.contact_sync,
                v.lead_stages if args.lead_stages is None else args.lead_stages,
                v.contact_stages if args.contact_stages is None else args.contact_stages,
            )
        known = await _portal_stages(settings) if values is not None else None
        result = await save(store, settings, values, current.version, BY, time.time(), known)
        for problem in result.problems:
            print(f"error: {problem.message}", file=sys.stderr)
        if result.problems:
            return 1
        if result.current is None:
            print(
                "error: the sync settings changed meanwhile; run the command again", file=sys.stderr
            )
            return 1
        _show(sync_settings_json(result.current), as_json=False)
        return 0

    return work


def register(command: Callable[..., Any]) -> None:
    """Add ``sync-settings`` through ``command(name, fn, help)`` of the main parser."""
    p = command("sync-settings", cmd_sync_settings, "show, set or reset the sync settings")
    p.add_argument("action", nargs="?", choices=("set", "reset"))
    p.add_argument("--json", action="store_true", help="show them as one JSON object")
    p.add_argument("--lead-stages", type=_stage_list, metavar="A,B")
    p.add_argument("--contact-stages", type=_stage_list, metavar="C,D")
    p.add_argument("--lead-sync", type=_switch, metavar="on|off")
    p.add_argument("--contact-sync", type=_switch, metavar="on|off")
