"""The command line's way to the database: one store, opened for one command.

Commands other than ``serve`` read and change the database directly. Opening a SQLite
store creates its file, so they check first that it exists: a command run from the
wrong directory would otherwise show an empty new database instead of saying that it
found none. Any driver's error on opening is one line naming the database, without its
credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Awaitable, Callable

from receiver.errors import ConfigError
from receiver.settings import ENV_PREFIX, Settings
from receiver.settings_loading import load_settings, unknown_variables
from receiver.store.base import EventStore
from receiver.store.factory import make_store
from receiver.store.sqlite.store import sqlite_path


def database_label(database_url: str) -> str:
    """The database URL without credentials, for messages."""
    scheme, _, rest = database_url.partition("://")
    # A password may sit before the "@" or in the query (?password=...): drop both.
    return f"{scheme}://{rest.rpartition('@')[2].partition('?')[0]}"


def _missing_sqlite_file(database_url: str) -> str | None:
    if not database_url.startswith("sqlite:///"):
        return None
    path = sqlite_path(database_url)
    if path == ":memory:":
        return None
    try:
        os.stat(path)
    except FileNotFoundError:
        return os.path.abspath(path)  # shows where a relative default pointed
    except OSError:
        pass  # e.g. no permission: opening it will say so in SQLite's words
    return None


async def with_store(
    settings: Settings, work: Callable[[EventStore], Awaitable[int]], create: bool = False
) -> int:
    """``work(store)``'s exit status, or 1 with one line on stderr if the store won't open.

    Only ``create`` (``serve``) may make a SQLite file that does not exist yet.
    """
    from receiver.ops.logging import configure_logging

    missing = None if create else _missing_sqlite_file(settings.database_url)
    if missing is not None:
        label = database_label(settings.database_url)
        print(
            f"error: cannot open the database {label}: {missing} does not exist (set"
            f" {ENV_PREFIX}DATABASE_URL to the server's database; `stagesync serve` creates"
            " a new one)",
            file=sys.stderr,
        )
        return 1

    # Store warnings go to stderr, never into --json output on stdout.
    configure_logging("json", "warning", settings.secret_values(), stream=sys.stderr)
    store = make_store(settings.database_url)
    try:
        await store.open()
    except Exception as exc:  # any driver's error: one line, no traceback
        with contextlib.suppress(Exception):
            await store.close()
        await _let_driver_threads_finish()
        label = database_label(settings.database_url)
        print(f"error: cannot open the database {label}: {exc}", file=sys.stderr)
        return 1
    try:
        return await work(store)
    finally:
        await store.close()


async def _let_driver_threads_finish(within_s: float = 1.0) -> None:
    # After a failed connect, aiosqlite's worker thread answers its clean-up later; if
    # the loop is closed by then it prints a traceback (omnilib/aiosqlite#389).
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, within_s)


async def no_work(store: EventStore) -> int:
    """Nothing: ``with_store(settings, no_work)`` only opens (and migrates) the database."""
    return 0


_SECRET_MISSING = ENV_PREFIX + "HUBSPOT_CLIENT_SECRET: required"
DEMO_HINT = (
    " (`make run` sets a demo secret when it is unset, for trying stagesync out; for real"
    " use, set it to your HubSpot app's client secret)"
)

#: Stands in for the client secret in commands that only read or write the database.
PLACEHOLDER_SECRET = "unused-by-database-commands"


def settings_from_args(args: argparse.Namespace, need_secret: bool = True) -> Settings:
    """The settings of a command: ``--config`` (or ``STAGESYNC_CONFIG``) and the environment.

    A command that only works on the database does not need the client secret.
    """
    environ = dict(os.environ)
    for warning in unknown_variables(environ):
        print(f"warning: {warning}", file=sys.stderr)
    if not need_secret:
        environ.setdefault(ENV_PREFIX + "HUBSPOT_CLIENT_SECRET", PLACEHOLDER_SECRET)
    try:
        return load_settings(getattr(args, "config", None), environ)
    except ConfigError as exc:
        problems = [p + DEMO_HINT if p.startswith(_SECRET_MISSING) else p for p in exc.problems]
        raise ConfigError(problems) from None
