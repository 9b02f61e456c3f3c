"""``python -m bench.checks_only serve ...``: the service's request path without a commit.

For the bench only: issue 2's other reference point, "signature check plus JSON parsing
alone". It runs ``stagesync`` as :mod:`bench.ingest_only` does (dispatcher paused), and
its SQLite store answers every ingest at once instead of queueing it for a group commit:
the same uvicorn, app, signature check, body parsing, duplicate keys, metrics and JSON
answer as the service, and nothing written. Set beside the minimal receiver (a commit
and no checks) and the service (both), it tells whether the Python work on a request or
the wait for its durable commit limits the service at a given concurrency.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bench import ingest_only
from receiver.cli.main import main
from receiver.models import NewEvent
from receiver.store.base import IngestResult
from receiver.store.sqlite.store import SQLiteStore


async def _answer_at_once(
    self: SQLiteStore, events: Sequence[NewEvent], now: float
) -> IngestResult:
    # What a commit of new events would answer, without the commit.
    invalid = sum(1 for event in events if event.invalid_error is not None)
    return IngestResult(len(events) - invalid, 0, invalid)


if __name__ == "__main__":
    ingest_only.pause_dispatcher()
    SQLiteStore.ingest = _answer_at_once  # type: ignore[method-assign]
    raise SystemExit(main(sys.argv[1:]))
