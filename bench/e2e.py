"""End-to-end latency: webhook sent to target upsert done, p50/p99, dry-run target.

The real service runs as a subprocess (``python -m receiver serve``, dry-run target) on
each backend; the fake HubSpot (answering after ``--e2e-hubspot-latency``, 100 ms by
default, as the real API does) runs in the bench's own process, which also sends the
events, one new contact per event so that each record belongs to one event.

Latency is measured from the client's send time to the dry-run record's ``upserted_at``
(the upsert) and to the event's ``updated_at`` (its outcome recorded), on the same
machine clock. Two loads, each with and without a HubSpot token:

* ``idle``: one event at a time into an idle service (``--e2e-idle`` events, spaced);
* ``c10``: ``--e2e-concurrency`` (HubSpot's default, 10) connections, each sending its
  next request as soon as the previous one is answered (``--e2e-events`` events).

With a token every event waits for one HubSpot read, so ~100 ms is the floor there; the
target "idle p50 under 50 ms" is about the service's own path, shown by the no-token row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.backends import Backend, backends_for
from bench.report import Row
from bench.tools import BenchError
from receiver.models import EventFilter
from receiver.store.factory import make_store
from tests.fakes.hubspot import DEFAULT_TOKEN, FakeHubSpot
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

NAME = "e2e"
DEFAULT = False
SETTLE_TIMEOUT_S = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this scenario."""
    group = parser.add_argument_group("e2e")
    group.add_argument("--e2e-events", type=int, default=1000, help="events under load (1000)")
    group.add_argument("--e2e-idle", type=int, default=100, help="events one at a time (100)")
    group.add_argument("--e2e-concurrency", type=int, default=10, help="connections (10)")
    group.add_argument(
        "--e2e-hubspot-latency", type=float, default=0.1, help="fake HubSpot answer time, s (0.1)"
    )


# -- shared with bench.drain ----------------------------------------------------------------


def service_env(database_url: str, secret: str, **settings: str) -> dict[str, str]:
    """The service's environment: ours without any ``STAGESYNC_*``, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGESYNC_")}
    env.update(
        {
            "STAGESYNC_HUBSPOT_CLIENT_SECRET": secret,
            "STAGESYNC_DATABASE_URL": database_url,
            "STAGESYNC_LOG_LEVEL": "warning",
            "STAGESYNC_TARGET": "dry-run",
        }
    )
    env.update({"STAGESYNC_" + k.upper(): v for k, v in settings.items()})
    return env


def _start(env: Mapping[str, str], workdir: Path) -> servers.Server:
    return servers.start_service(env, workdir, name="sync-service")


@contextlib.asynccontextmanager
async def serving(env: Mapping[str, str], workdir: Path) -> AsyncIterator[str]:
    """The service, started off the event loop (which keeps serving the fake HubSpot);
    yields its base URL."""
    server = await asyncio.to_thread(_start, env, workdir)
    try:
        yield server.url.removesuffix(servers.WEBHOOK_PATH)
    finally:
        await asyncio.to_thread(server.stop)


async def settle(
    http: httpx.AsyncClient,
    base: str,
    total: int,
    timeout_s: float = SETTLE_TIMEOUT_S,
    poll_s: float = 0.02,
) -> dict[str, Any]:
    """Poll ``/status`` until ``total`` events are stored and none is open; the status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = (await http.get(f"{base}/status")).json()
        counts = status["counts"]
        if sum(counts.values()) >= total and not (counts["pending"] or counts["retrying"]):
            return status
        if time.monotonic() > deadline:
            raise BenchError(f"events still open after {timeout_s:.0f} s: {counts}")
        await asyncio.sleep(poll_s)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, interpolated."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


# -- this scenario ---------------------------------------------------------------------------


async def _send_all(
    http: httpx.AsyncClient, url: str, secret: str, ids: list[int], connections: int, gap_s: float
) -> dict[int, float]:
    """Send one event per id; each id's send time (unix seconds)."""
    sent: dict[int, float] = {}
    queue = iter(ids)

    async def sender() -> None:
        for object_id in queue:
            body, headers = signed(url, [event(object_id, "lead")], secret)
            sent[object_id] = time.time()
            answer = await http.post(url, content=body, headers=headers)
            if answer.status_code != 200:
                raise BenchError(f"webhook answered {answer.status_code}: {answer.text[:200]}")
            if gap_s:
                await asyncio.sleep(gap_s)

    await asyncio.gather(*(sender() for _ in range(connections)))
    return sent


async def _latencies(database_url: str, sent: dict[int, float]) -> tuple[list[float], list[float]]:
    """Seconds from send to upsert, and from send to the recorded outcome, in ms."""
    store = make_store(database_url)
    await store.open()
    try:
        records = await store.list_records()
        events = await store.list_events(EventFilter(state="synced"), len(sent) + 10)
    finally:
        await store.close()
    upserted = [(r.upserted_at - sent[int(r.hubspot_id)]) * 1000 for r in records]
    recorded = [(e.updated_at - sent[e.object_id]) * 1000 for e in events if e.object_id in sent]
    if len(upserted) != len(sent) or len(recorded) != len(sent):
        raise BenchError(f"{len(sent)} sent, {len(upserted)} upserted, {len(recorded)} synced")
    return upserted, recorded


async def _measure(backend: Backend, args: argparse.Namespace, token: bool, load: str) -> Row:
    count = args.e2e_idle if load == "idle" else args.e2e_events
    connections = 1 if load == "idle" else args.e2e_concurrency
    # Idle: each event lands on a service that finished the previous one.
    gap = (args.e2e_hubspot_latency if token else 0.0) + 0.1 if load == "idle" else 0.0
    ids = list(itertools.islice(itertools.count(1_000_000), count))
    fake = FakeHubSpot(
        contacts={i: {"lifecyclestage": "lead", "email": f"{i}@example.com"} for i in ids},
        latency_s=args.e2e_hubspot_latency,
    )
    url = await asyncio.to_thread(backend.fresh_url)  # it runs a loop of its own
    try:
        async with running_server(fake.app) as hubspot_url:
            extra = {"hubspot_access_token": DEFAULT_TOKEN, "hubspot_api_url": hubspot_url}
            env = service_env(url, args.secret, **(extra if token else {}))
            async with (
                serving(env, args.workdir) as base,
                httpx.AsyncClient(
                    timeout=30, limits=httpx.Limits(max_connections=connections + 1)
                ) as http,
            ):
                hook = f"{base}{servers.WEBHOOK_PATH}"
                started = time.monotonic()
                sent = await _send_all(http, hook, args.secret, ids, connections, gap)
                sending = time.monotonic() - started
                await settle(http, base, count)
        upserted, recorded = await _latencies(url, sent)
    finally:
        await asyncio.to_thread(backend.drop, url)
    return {
        "backend": backend.name,
        "hubspot": f"{args.e2e_hubspot_latency * 1000:.0f} ms" if token else "no token",
        "load": load if load == "idle" else f"c{connections}",
        "events": count,
        "events/s sent": count / sending,
        "upsert p50 ms": percentile(upserted, 0.5),
        "upsert p99 ms": percentile(upserted, 0.99),
        "synced p50 ms": percentile(recorded, 0.5),
        "synced p99 ms": percentile(recorded, 0.99),
        "hs reads": fake.batch_read_calls if token else None,
    }


def run(args: argparse.Namespace) -> list[Row]:
    """Idle and concurrent loads, with and without a token, per backend."""
    backends = backends_for(args)
    rows: list[Row] = []
    for backend in backends:
        for token in (False, True):
            for load in ("idle", "c10"):
                row = asyncio.run(_measure(backend, args, token, load))
                print(
                    f"bench: e2e {backend.name} {row['hubspot']} {row['load']}:"
                    f" p50 {row['upsert p50 ms']:.1f} ms, p99 {row['upsert p99 ms']:.1f} ms",
                    file=sys.stderr,
                )
                rows.append(row)
    return rows
