"""``python -m bench.ingest_only serve ...``: the service with its dispatcher paused.

For the bench only. It runs ``stagesync`` exactly as ``python -m receiver`` does, except
that the dispatcher never starts, so nothing but webhook ingest writes to the database.
Comparing it with the real service shows what the ingest path can do on its own and
what the dispatcher's writes, competing for the one SQLite writer, cost it.
"""

from __future__ import annotations

import sys

from receiver.cli.main import main
from receiver.dispatch import dispatcher


def _paused_start(self: dispatcher.Dispatcher) -> None:
    """Leave the dispatcher stopped."""


def _always_running(self: dispatcher.Dispatcher, now: float) -> bool:
    return True


def pause_dispatcher() -> None:
    """Keep the dispatcher from starting, and ``/readyz`` from missing it."""
    dispatcher.Dispatcher.start = _paused_start  # type: ignore[method-assign]
    dispatcher.Dispatcher.running = _always_running  # type: ignore[method-assign]


if __name__ == "__main__":
    pause_dispatcher()
    raise SystemExit(main(sys.argv[1:]))
