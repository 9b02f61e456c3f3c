"""Targets: the Salesforce burst, run against every real target's fake.

The burst of :mod:`bench.salesforce` (``--tg-events`` over ``--tg-contacts`` contacts,
per contact a stage change then property changes, shuffled, in signed requests) goes
through the real service (a subprocess) to the fake HubSpot and to each target's fake in
turn, every fake answering after ``--tg-latency`` (100 ms). The fakes and the adapters
that drive them are the conformance suite's (:mod:`tests.support.target_adapters`).

Reported per target and backend: target calls (upsert calls, and all calls including
token requests) per contact, records per upsert call, the time until every request was
acknowledged and until nothing was pending or retrying, outcomes, and a check that every
contact ended in the CRM as the right kind with its email.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack

import httpx

from bench import servers
from bench.backends import Backend, backends_for
from bench.e2e import settle
from bench.report import Row
from bench.salesforce import LEAD_STAGES, POLL_S, SETTLE_TIMEOUT_S, Burst, _send, _service
from bench.salesforce import make_burst as _make_burst
from tests.fakes.hubspot import DEFAULT_TOKEN, FakeHubSpot
from tests.support.servers import running_server
from tests.support.target_adapters import ADAPTERS, Adapter

NAME = "targets"
DEFAULT = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this scenario."""
    group = parser.add_argument_group("targets")
    group.add_argument(
        "--tg-targets",
        default=",".join(ADAPTERS),
        help=f"targets to run (default {','.join(ADAPTERS)})",
    )
    group.add_argument("--tg-events", type=int, default=10_000, help="events (default 10000)")
    group.add_argument("--tg-contacts", type=int, default=2_000, help="contacts (default 2000)")
    group.add_argument(
        "--tg-latency", type=float, default=0.1, help="each fake's answer time, s (0.1)"
    )
    group.add_argument("--tg-batch", type=int, default=100, help="events per request (100)")
    group.add_argument("--tg-connections", type=int, default=10, help="connections (10)")
    group.add_argument(
        "--tg-dispatch-concurrency",
        type=int,
        default=None,
        help="the service's DISPATCH_CONCURRENCY (default: the service's own, 4)",
    )


def _env(
    adapter: Adapter, database_url: str, secret: str, hubspot_url: str, concurrency: int | None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGESYNC_")}
    env.update(
        {
            "STAGESYNC_HUBSPOT_CLIENT_SECRET": secret,
            "STAGESYNC_DATABASE_URL": database_url,
            "STAGESYNC_LOG_LEVEL": "warning",
            "STAGESYNC_TARGET": adapter.name,
            "STAGESYNC_HUBSPOT_ACCESS_TOKEN": DEFAULT_TOKEN,
            "STAGESYNC_HUBSPOT_API_URL": hubspot_url,
        }
    )
    env.update({f"STAGESYNC_{k.upper()}": v for k, v in adapter.env().items()})
    if concurrency is not None:
        env["STAGESYNC_DISPATCH_CONCURRENCY"] = str(concurrency)
    return env


def _check(burst: Burst, adapter: Adapter, counts: dict[str, int]) -> str:
    wrong = 0
    for object_id, props in burst.contacts.items():
        kind = "lead" if props["lifecyclestage"] in LEAD_STAGES else "contact"
        record = adapter.record(kind, object_id)
        if record is None or record.get(adapter.email_field) != props["email"]:
            wrong += 1
    problems = [f"{wrong} contacts missing or wrong"] if wrong else []
    if counts.get("failed") or counts.get("invalid"):
        problems.append(f"{counts.get('failed', 0)} failed, {counts.get('invalid', 0)} invalid")
    return "ok" if not problems else "FAIL: " + "; ".join(problems)


def _all_calls(adapter: Adapter) -> int:
    calls = adapter.fake.calls
    if adapter.name == "salesforce":
        return sum(calls.values())
    if adapter.name == "webhook":
        return int(calls["post"])
    return sum(n for kind, n in calls.items() if kind not in ("refused", "unauthorized"))


async def _measure(
    name: str, backend: Backend, url: str, burst: Burst, args: argparse.Namespace
) -> Row:
    adapter = ADAPTERS[name]()
    adapter.fake.latency_s = args.tg_latency
    hubspot = FakeHubSpot(contacts=burst.contacts)
    async with AsyncExitStack() as stack:
        hubspot_url = await stack.enter_async_context(running_server(hubspot.app))
        await adapter.serve(stack)
        env = _env(adapter, url, args.secret, hubspot_url, args.tg_dispatch_concurrency)
        server = await stack.enter_async_context(_service(env, args.workdir))
        limits = httpx.Limits(max_connections=args.tg_connections + 1)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30, limits=limits))
        base = server.url.removesuffix(servers.WEBHOOK_PATH)
        started = time.monotonic()
        await _send(http, server.url, burst, args.secret, args.tg_connections)
        acked = time.monotonic() - started
        status = await settle(http, base, burst.events, SETTLE_TIMEOUT_S, POLL_S)
        elapsed = time.monotonic() - started
    sizes = adapter.upsert_sizes()
    counts: dict[str, int] = status["counts"]
    skipped = Counter(status.get("skipped_by_reason") or {})
    contacts = len(burst.contacts)
    total = _all_calls(adapter)
    return {
        "target": name,
        "backend": backend.name,
        "events": burst.events,
        "contacts": contacts,
        "fake ms": round(args.tg_latency * 1000),
        "workers": args.tg_dispatch_concurrency or 4,
        "upsert calls": len(sizes),
        "all calls": total,
        "calls/contact": f"{total / contacts:.4f}",
        "records/call": sum(sizes) / len(sizes) if sizes else None,
        "hs reads": hubspot.batch_read_calls,
        "acked s": acked,
        "e2e s": elapsed,
        "synced": counts.get("synced", 0),
        "coalesced": skipped.pop("coalesced", 0),
        "failed": counts.get("failed", 0),
        "check": _check(burst, adapter, counts),
    }


def run(args: argparse.Namespace) -> list[Row]:
    """One burst per target and backend; prints calls per contact as it goes."""
    names = [n.strip() for n in args.tg_targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in ADAPTERS]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; known: {', '.join(ADAPTERS)}")
    burst = _make_burst(args.tg_events, args.tg_contacts, args.tg_batch)
    rows: list[Row] = []
    for name in names:
        for backend in backends_for(args):
            # Outside the event loop: the PostgreSQL backend runs its own to make a database.
            url = backend.fresh_url()
            try:
                row = asyncio.run(_measure(name, backend, url, burst, args))
            finally:
                backend.drop(url)
            print(
                f"bench: targets {name} {backend.name}: {row['all calls']} calls,"
                f" {row['calls/contact']} per contact, {row['e2e s']:.2f} s end to end,"
                f" {row['check']}",
                file=sys.stderr,
            )
            rows.append(row)
    return rows
