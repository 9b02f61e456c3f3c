"""Drain rate of a stored backlog (50,000 events), limited by the HubSpot rate, not by us.

The backlog is written straight into a fresh database (as events left after a restart:
stored, never dispatched), then the real service starts on it (dry-run target) with the
fake HubSpot in the bench's own process answering after ``--drain-hubspot-latency``
(100 ms by default). Each row is one drain: with a token at each configured rate in
``--drain-rates`` (``HUBSPOT_RATE_LIMIT``, calls per 10 s; HubSpot's lowest private-app
limit, 100, is the default), and without a token.

The fake enforces the configured limit as HubSpot does, counting calls as they arrive
(``--drain-no-enforce`` turns that off, to see the pacer alone). Reported: time to
drain, events/s and contacts/s, HubSpot reads and ids per read, calls/s over the whole
drain and in steady state (after the first ``rate`` calls, which the sliding window lets
through as fast as HubSpot answers), the most calls that arrived within any 10 s, 429s
received (each pauses every read for 10 s) and the ceiling the configured rate allows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from bench.backends import Backend, backends_for
from bench.e2e import service_env, serving, settle
from bench.report import Row
from receiver.hubspot.payload import to_new_events
from receiver.store.factory import make_store
from tests.fakes.hubspot import DEFAULT_TOKEN, FakeHubSpot
from tests.support.servers import running_server
from tests.support.webhooks import event

NAME = "drain"
DEFAULT = False
CHUNK = 5_000
FIRST_ID = 3_000_000


def _rates(text: str) -> list[int]:
    try:
        rates = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates are integers, not {text!r}") from None
    if not rates or min(rates) < 1:
        raise argparse.ArgumentTypeError("give at least one rate, each 1 or more")
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this scenario."""
    group = parser.add_argument_group("drain")
    group.add_argument("--drain-events", type=int, default=50_000, help="backlog (50000)")
    group.add_argument("--drain-contacts", type=int, default=20_000, help="contacts (20000)")
    group.add_argument(
        "--drain-rates",
        type=_rates,
        default=[100, 50],
        help="HubSpot calls per 10 s to run with a token (default 100,50)",
    )
    group.add_argument(
        "--drain-no-enforce",
        action="store_true",
        help="let the fake HubSpot answer past the rate limit (default: it answers 429)",
    )
    group.add_argument(
        "--drain-hubspot-latency",
        type=float,
        default=0.1,
        help="fake HubSpot answer time, s (0.1)",
    )


class Arrivals:
    """The fake's app, noting when each batch read arrives (``time.monotonic``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.times: list[float] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/batch/read"):
            self.times.append(time.monotonic())
        await self.app(scope, receive, send)

    def most_in(self, window_s: float) -> int:
        """The most arrivals within any ``window_s`` seconds."""
        most = start = 0
        for end, t in enumerate(self.times):
            while self.times[start] <= t - window_s:
                start += 1
            most = max(most, end - start + 1)
        return most


async def _store_backlog(url: str, events: int, contacts: int) -> None:
    """``events`` lifecycle-stage changes over ``contacts``, committed as HubSpot would."""
    batch = [
        event(FIRST_ID + n % contacts, "lead", occurred_at=1_000 + n, event_id=n)
        for n in range(events)
    ]
    store = make_store(url)
    await store.open()
    try:
        for start in range(0, events, CHUNK):
            await store.ingest(to_new_events(batch[start : start + CHUNK]), time.time())
    finally:
        await store.close()


async def _measure(backend: Backend, args: argparse.Namespace, rate: int | None) -> Row:
    events, contacts = args.drain_events, args.drain_contacts
    fake = FakeHubSpot(
        contacts={
            FIRST_ID + i: {"lifecyclestage": "lead", "email": f"{i}@example.com"}
            for i in range(contacts)
        },
        latency_s=args.drain_hubspot_latency,
        limit_per_10s=None if args.drain_no_enforce else rate,
    )
    arrivals = Arrivals(fake.app)
    url = backend.fresh_url()
    try:
        await _store_backlog(url, events, contacts)
        async with running_server(arrivals) as hubspot_url:
            extra = {}
            if rate is not None:
                extra = {
                    "hubspot_access_token": DEFAULT_TOKEN,
                    "hubspot_api_url": hubspot_url,
                    "hubspot_rate_limit": str(rate),
                }
            env = service_env(url, args.secret, **extra)
            samples: list[tuple[float, int]] = []
            async with serving(env, args.workdir) as base, httpx.AsyncClient(timeout=30) as http:
                started = time.monotonic()
                sampling = asyncio.create_task(_sample(fake, samples))
                try:
                    status = await settle(http, base, events)
                finally:
                    sampling.cancel()
                elapsed = time.monotonic() - started
    finally:
        backend.drop(url)
    calls = fake.batch_read_calls
    steady = _steady_rate(samples, rate) if rate is not None else None
    counts = status["counts"]
    return {
        "backend": backend.name,
        "rate /10s": rate if rate is not None else "no token",
        "events": events,
        "contacts": contacts,
        "drain s": elapsed,
        "events/s": events / elapsed,
        "contacts/s": contacts / elapsed,
        "hs reads": calls if rate is not None else None,
        "ids/read": (sum(fake.ids_per_call) / calls) if calls else None,
        "calls/s": calls / elapsed if rate is not None else None,
        "steady calls/s": steady,
        "allowed calls/s": rate / 10 if rate is not None else None,
        "max calls/10s": arrivals.most_in(10.0) if rate is not None else None,
        "429s": fake.answers.count(429) if rate is not None else None,
        "synced": counts.get("synced", 0),
        "failed": counts.get("failed", 0),
    }


async def _sample(fake: FakeHubSpot, samples: list[tuple[float, int]]) -> None:
    while True:
        samples.append((time.monotonic(), fake.batch_read_calls))
        await asyncio.sleep(0.05)


def _steady_rate(samples: list[tuple[float, int]], rate: int) -> float | None:
    """Calls per second after the first ``rate`` calls (the window's free burst)."""
    total = samples[-1][1] if samples else 0
    start = next(((t, n) for t, n in samples if n >= rate), None)
    end = next(((t, n) for t, n in samples if n == total), None)
    if start is None or end is None or end[0] <= start[0]:
        return None
    return (end[1] - start[1]) / (end[0] - start[0])


def run(args: argparse.Namespace) -> list[Row]:
    """One drain per configured rate and one without a token, per backend."""
    backends = backends_for(args)
    rows: list[Row] = []
    for backend in backends:
        for rate in [*args.drain_rates, None]:
            print(
                f"bench: drain {backend.name}: {args.drain_events} events over"
                f" {args.drain_contacts} contacts, rate {rate or 'no token'}",
                file=sys.stderr,
            )
            row = asyncio.run(_measure(backend, args, rate))
            print(
                f"bench: drain {backend.name}: {row['drain s']:.1f} s,"
                f" {row['events/s']:.0f} events/s, calls/s {row['calls/s'] or '-'}",
                file=sys.stderr,
            )
            rows.append(row)
    return rows
