"""The minimal receiver: the issue's reference point for single-event requests.

"A bare insert with group commit and nothing else": the same Starlette, uvicorn options,
event loop and HTTP parser as the bare endpoint, and each request's body stored as one
row before the answer, durably (SQLite WAL, ``synchronous=FULL``). Requests that arrive
while a commit is in progress share the next one, committed by a thread of its own. No
signature check, no JSON parsing, no duplicate key, no answer counts. Between the bare
endpoint and the service, it shows what durable storage alone costs on this machine. Run
it with ``python -m bench.minimal --port P --database PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.bare import UVICORN_OPTIONS, healthz

TABLE = "bodies"


class GroupCommit:
    """Bodies queued by requests, committed a group at a time in a thread."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._cond = threading.Condition()
        self._queue: list[tuple[bytes, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Open the database and start the commit thread."""
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, name="minimal-commit", daemon=True).start()

    async def store(self, body: bytes) -> None:
        """Return once ``body`` is committed."""
        assert self._loop is not None
        future = self._loop.create_future()
        with self._cond:
            self._queue.append((body, future))
            self._cond.notify()
        await future

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, body BLOB)")
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                group, self._queue = self._queue, []
            conn.execute("BEGIN")
            conn.executemany(f"INSERT INTO {TABLE} (body) VALUES (?)", [(b,) for b, _ in group])
            conn.execute("COMMIT")
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_answer, [future for _, future in group])


def _answer(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def build_app(path: str) -> Starlette:
    """The minimal receiver, storing into the SQLite file at ``path``."""
    commits = GroupCommit(path)

    async def webhook(request: Request) -> Response:
        await commits.store(await request.body())
        return Response(b'{"stored":1}', media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        commits.start()
        yield

    return Starlette(
        routes=[
            Route("/webhooks/hubspot", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def count_stored(path: str) -> int:
    """How many bodies the receiver at ``path`` has committed."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])


def main() -> None:
    """Serve the minimal receiver on loopback."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.database), host=args.host, port=args.port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
