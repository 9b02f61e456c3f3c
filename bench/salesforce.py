"""Salesforce: a burst of signed webhooks through the service to a fake HubSpot and Salesforce.

The real service runs as a subprocess (``python -m receiver serve``, ``TARGET=salesforce``)
on each backend. The fake HubSpot (holding every contact's current properties) and the
fake Salesforce (answering after ``--sf-latency``, 150 ms by default, as the real API
does) run in the bench's own process, which also sends the events: ``--sf-events`` over
``--sf-contacts`` contacts, each contact's events one lifecycle-stage change and then
property changes, shuffled over the whole burst, in signed requests of ``--sf-batch``
events on ``--sf-connections`` connections (HubSpot's default is 10).

Reported per backend: Salesforce calls (single and collection upserts, token requests
apart) and calls per contact, records per call, HubSpot batch reads, the time until
every request was acknowledged and until no event was pending or retrying (end to end),
event outcomes, and a check that every contact ended in Salesforce as the right object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.backends import Backend, backends_for
from bench.e2e import settle
from bench.report import Row
from bench.tools import BenchError
from tests.fakes.hubspot import DEFAULT_TOKEN, FakeHubSpot
from tests.fakes.salesforce import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, FakeSalesforce
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

NAME = "salesforce"
DEFAULT = False

LEAD_STAGES = ("lead", "marketingqualifiedlead", "salesqualifiedlead")
CONTACT_STAGES = ("opportunity", "customer")
PROPERTIES = ("firstname", "lastname", "email", "phone", "jobtitle", "company")
SETTLE_TIMEOUT_S = 600.0
POLL_S = 0.05
SEED = 20240501


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this scenario."""
    group = parser.add_argument_group("salesforce")
    group.add_argument("--sf-events", type=int, default=10_000, help="events (default 10000)")
    group.add_argument("--sf-contacts", type=int, default=2_000, help="contacts (default 2000)")
    group.add_argument(
        "--sf-latency", type=float, default=0.15, help="fake Salesforce answer time, s (0.15)"
    )
    group.add_argument(
        "--sf-hubspot-latency", type=float, default=0.0, help="fake HubSpot answer time, s (0)"
    )
    group.add_argument("--sf-batch", type=int, default=100, help="events per request (100)")
    group.add_argument("--sf-connections", type=int, default=10, help="connections (10)")


@dataclass
class Burst:
    """The contacts HubSpot holds and the webhook batches announcing their changes."""

    contacts: dict[int, dict[str, str]]
    batches: list[list[dict[str, Any]]]

    @property
    def events(self) -> int:
        return sum(len(batch) for batch in self.batches)


def make_burst(events: int, contacts: int, batch: int, seed: int = SEED) -> Burst:
    """``events`` over ``contacts``: per contact a stage change, then property changes."""
    if contacts < 1 or events < contacts:
        raise BenchError("need at least one contact and at least one event per contact")
    rand = random.Random(seed)
    held: dict[int, dict[str, str]] = {}
    stream: list[dict[str, Any]] = []
    base_ms = int(time.time() * 1000)
    for n in range(contacts):
        object_id = 10_000 + n
        stage = rand.choice(LEAD_STAGES if n % 5 < 3 else CONTACT_STAGES)  # 60 % leads
        held[object_id] = {
            "lifecyclestage": stage,
            "firstname": f"First{n}",
            "lastname": f"Last{n}",
            "email": f"person{n}@example.com",
            "phone": f"+1 555 {n:07d}",
            "jobtitle": rand.choice(("CTO", "Engineer", "Buyer", "")),
            "company": f"Company {n % 300}",
        }
        share = events // contacts + (1 if n < events % contacts else 0)
        at = base_ms + n
        stream.append(event(object_id, stage, occurred_at=at))
        for i in range(1, share):
            prop = PROPERTIES[(i - 1) % len(PROPERTIES)]
            value = held[object_id][prop]
            stream.append(
                event(object_id, property_name=prop, property_value=value, occurred_at=at + i)
            )
    rand.shuffle(stream)
    batches = [stream[i : i + batch] for i in range(0, len(stream), batch)]
    return Burst(held, batches)


def _service_env(
    database_url: str, secret: str, hubspot_url: str, salesforce_url: str, token: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGESYNC_")}
    env.update(
        {
            "STAGESYNC_HUBSPOT_CLIENT_SECRET": secret,
            "STAGESYNC_DATABASE_URL": database_url,
            "STAGESYNC_LOG_LEVEL": "warning",
            "STAGESYNC_TARGET": "salesforce",
            "STAGESYNC_HUBSPOT_ACCESS_TOKEN": DEFAULT_TOKEN,
            "STAGESYNC_HUBSPOT_API_URL": hubspot_url,
            "STAGESYNC_SALESFORCE_INSTANCE_URL": salesforce_url,
            "STAGESYNC_SALESFORCE_ACCESS_TOKEN": token,
            "STAGESYNC_SALESFORCE_CLIENT_ID": CLIENT_ID,
            "STAGESYNC_SALESFORCE_CLIENT_SECRET": CLIENT_SECRET,
            "STAGESYNC_SALESFORCE_REFRESH_TOKEN": REFRESH_TOKEN,
            "STAGESYNC_SALESFORCE_TOKEN_URL": f"{salesforce_url}/services/oauth2/token",
        }
    )
    return env


def _start_service(env: dict[str, str], workdir: Path) -> servers.Server:
    """``python -m receiver serve`` in a subprocess, once it answers ``/healthz``."""
    return servers.start_service(env, workdir, name="salesforce-service")


@contextlib.asynccontextmanager
async def _service(env: dict[str, str], workdir: Path) -> AsyncIterator[servers.Server]:
    """The service, started and stopped off the event loop, which keeps serving the
    fakes meanwhile."""
    server = await asyncio.to_thread(_start_service, env, workdir)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def _send(
    http: httpx.AsyncClient, url: str, burst: Burst, secret: str, connections: int
) -> None:
    gate = asyncio.Semaphore(connections)

    async def post(batch: list[dict[str, Any]]) -> None:
        body, headers = signed(url, batch, secret)
        async with gate:
            response = await http.post(url, content=body, headers=headers)
        if response.status_code != 200:
            raise BenchError(f"webhook answered {response.status_code}: {response.text[:200]}")

    await asyncio.gather(*(post(batch) for batch in burst.batches))


def _check(burst: Burst, fake: FakeSalesforce, counts: dict[str, int]) -> str:
    """Every contact is in Salesforce as the object its stage says, and nothing failed."""
    wrong = 0
    for object_id, props in burst.contacts.items():
        obj = "Lead" if props["lifecyclestage"] in LEAD_STAGES else "Contact"
        record = fake.record(obj, str(object_id))
        if record is None or record.fields.get("Email") != props["email"]:
            wrong += 1
    problems = [f"{wrong} contacts missing or wrong"] if wrong else []
    if counts.get("failed") or counts.get("invalid"):
        problems.append(f"{counts.get('failed', 0)} failed, {counts.get('invalid', 0)} invalid")
    return "ok" if not problems else "FAIL: " + "; ".join(problems)


async def _measure(backend: Backend, burst: Burst, args: argparse.Namespace) -> Row:
    hubspot = FakeHubSpot(contacts=burst.contacts, latency_s=args.sf_hubspot_latency)
    salesforce = FakeSalesforce(latency_s=args.sf_latency)
    url = backend.fresh_url()
    try:
        async with (
            running_server(hubspot.app) as hubspot_url,
            running_server(salesforce.app) as salesforce_url,
        ):
            env = _service_env(
                url, args.secret, hubspot_url, salesforce_url, salesforce.access_token
            )
            async with (
                _service(env, args.workdir) as server,
                httpx.AsyncClient(
                    timeout=30, limits=httpx.Limits(max_connections=args.sf_connections + 1)
                ) as http,
            ):
                base = server.url.removesuffix(servers.WEBHOOK_PATH)
                started = time.monotonic()
                await _send(http, server.url, burst, args.secret, args.sf_connections)
                acked = time.monotonic() - started
                status = await settle(http, base, burst.events, SETTLE_TIMEOUT_S, POLL_S)
                elapsed = time.monotonic() - started
    finally:
        backend.drop(url)
    calls = salesforce.calls["upsert"] + salesforce.calls["collection_upsert"]
    sent = sum(
        len(c.body["records"]) if c.kind == "collection_upsert" else 1
        for c in salesforce.log
        if c.kind in ("upsert", "collection_upsert")
    )
    counts: dict[str, int] = status["counts"]
    skipped = Counter(status.get("skipped_by_reason") or {})
    contacts = len(burst.contacts)
    return {
        "backend": backend.name,
        "events": burst.events,
        "contacts": contacts,
        "sf ms": round(args.sf_latency * 1000),
        "sf calls": calls,
        "calls/contact": f"{calls / contacts:.3f}",
        "records/call": sent / calls if calls else None,
        "hs reads": hubspot.batch_read_calls,
        "acked s": acked,
        "e2e s": elapsed,
        "events/s": burst.events / elapsed,
        "synced": counts.get("synced", 0),
        "coalesced": skipped.pop("coalesced", 0),
        "stale": skipped.pop("stale", 0),
        "other skips": sum(skipped.values()),
        "failed": counts.get("failed", 0),
        "check": _check(burst, salesforce, counts),
    }


def run(args: argparse.Namespace) -> list[Row]:
    """One burst per backend; prints calls per contact as it goes."""
    backends = backends_for(args)
    burst = make_burst(args.sf_events, args.sf_contacts, args.sf_batch)
    rows: list[Row] = []
    for backend in backends:
        print(
            f"bench: salesforce {backend.name}: {burst.events} events over"
            f" {len(burst.contacts)} contacts",
            file=sys.stderr,
        )
        row = asyncio.run(_measure(backend, burst, args))
        print(
            f"bench: salesforce {backend.name}: {row['sf calls']} Salesforce calls,"
            f" {row['calls/contact']} calls per contact, {row['e2e s']:.2f} s end to end",
            file=sys.stderr,
        )
        rows.append(row)
    return rows
