"""Salesforce bulk: a large sync through Bulk API 2.0 jobs against 200-record collections.

The real Salesforce target upserts ``--bulk-contacts`` contacts (100,000 by default, 60 %
Leads) into the fake Salesforce over loopback HTTP twice: once with ``bulk_upsert``, as
a backfill or a backlog of ``SALESFORCE_BULK_THRESHOLD`` records or more does, and once
with ``upsert_batch`` 200 records at a time (``DISPATCH_CONCURRENCY``-like parallelism of
``--bulk-parallel``), as the collections path does. Reported per path: Salesforce API
calls (what counts against the org's daily allocation), records per call, the time, the
records the fake org holds afterwards and how many failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx

from bench.report import Row
from receiver.errors import UpstreamError
from receiver.targets.base import UpsertRequest, UpsertResult
from receiver.targets.salesforce.config import SalesforceConfig
from receiver.targets.salesforce.target import SalesforceTarget
from tests.fakes.salesforce import FakeSalesforce
from tests.support.servers import running_server

NAME = "salesforce-bulk"
DEFAULT = False

Results = list[UpsertResult | UpstreamError]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this scenario."""
    group = parser.add_argument_group("salesforce-bulk")
    group.add_argument(
        "--bulk-contacts", type=int, default=100_000, help="contacts (default 100000)"
    )
    group.add_argument(
        "--bulk-parallel", type=int, default=4, help="collection calls in flight (default 4)"
    )


def requests_for(count: int) -> list[UpsertRequest]:
    """``count`` contacts, 60 % Leads, with the fields a HubSpot contact maps to."""
    out = []
    for n in range(count):
        fields = {
            "FirstName": f"First{n}",
            "LastName": f"Last{n}",
            "Email": f"person{n}@example.com",
            "Title": ("CTO", "Engineer", "Buyer")[n % 3],
        }
        if n % 5 < 3:
            out.append(UpsertRequest("lead", str(100_000 + n), {**fields, "Company": "ACME"}))
        else:
            out.append(UpsertRequest("contact", str(100_000 + n), fields))
    return out


async def collections(
    target: SalesforceTarget, requests: Sequence[UpsertRequest], parallel: int
) -> Results:
    """200 records a call, ``parallel`` calls in flight, as the dispatcher's workers go."""
    gate = asyncio.Semaphore(parallel)
    size = target.batch_size

    async def one(chunk: Sequence[UpsertRequest]) -> Results:
        async with gate:
            return await target.upsert_batch(chunk)

    chunks = [requests[i : i + size] for i in range(0, len(requests), size)]
    return [r for done in await asyncio.gather(*(one(c) for c in chunks)) for r in done]


async def _measure(
    label: str,
    requests: Sequence[UpsertRequest],
    path: Callable[[SalesforceTarget], Awaitable[Results]],
) -> Row:
    fake = FakeSalesforce()
    async with running_server(fake.app) as url, httpx.AsyncClient(timeout=120) as http:
        config = SalesforceConfig(
            instance_url=url,
            access_token=fake.access_token,
            client_id=None,
            client_secret=None,
            refresh_token=None,
        )
        target = SalesforceTarget(config=config, http=http)
        target.bulk.first_poll_s = 0.05  # the fake finishes at once; Salesforce takes longer
        started = time.monotonic()
        results = await path(target)
        elapsed = time.monotonic() - started
    calls = sum(n for kind, n in fake.calls.items() if kind != "token")
    failed = sum(1 for r in results if isinstance(r, UpstreamError))
    return {
        "path": label,
        "records": len(requests),
        "sf calls": calls,
        "records/call": len(requests) / calls if calls else None,
        "seconds": elapsed,
        "held": len(fake.records),
        "failed": failed,
        "calls by kind": " ".join(f"{k}={n}" for k, n in sorted(fake.calls.items())),
    }


def run(args: argparse.Namespace) -> list[Row]:
    """Both paths over the same contacts."""
    requests = requests_for(args.bulk_contacts)
    rows = []
    for label, path in (
        ("bulk api 2.0", lambda t: t.bulk_upsert(requests)),
        ("collections", lambda t: collections(t, requests, args.bulk_parallel)),
    ):
        print(f"bench: salesforce-bulk: {label}, {len(requests)} records", file=sys.stderr)
        row = asyncio.run(_measure(label, requests, path))
        print(
            f"bench: salesforce-bulk: {label}: {row['sf calls']} calls in {row['seconds']:.1f} s",
            file=sys.stderr,
        )
        rows.append(row)
    return rows
