"""Logging setup, in one place: structlog, JSON in production and console on a TTY.

Standard-library records (uvicorn's own warnings and errors) go through the same
renderer, so a JSON log stays one JSON object per line.

Event names are stable snake_case (``event_synced``, ``upsert_failed``). Known secret
values are redacted from every line as a last line of defence: code should never log a
secret in the first place, but a URL or an upstream message might carry one.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.ops.redaction import REDACTED as REDACTED  # the name tests and callers know
from receiver.ops.redaction import SecretScrubber

REQUEST_ID_HEADER = b"x-request-id"
# A caller's request id is kept only when it is short and plain, so it cannot forge
# log structure or smuggle a secret-looking blob into every line.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


class _Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self.scrubber = SecretScrubber(secrets)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrubber.text(value)
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._scrub(v) for v in value)
        return value

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self.scrubber:
            return event_dict
        for key, value in event_dict.items():
            event_dict[key] = self._scrub(value)
        return event_dict


class StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes standard-library records (uvicorn's) in the same format as stagesync's own."""


# Libraries whose info and debug lines repeat what our own events say.
# python-multipart writes one debug line per byte of a form body.
QUIET_LIBRARIES = ("httpx", "httpcore", "aiosqlite", "asyncpg", "multipart", "python_multipart")


def configure_logging(
    fmt: str = "auto", level: str = "info", secrets: Iterable[str] = (), stream: Any = None
) -> None:
    """Configure structlog, and route standard-library logging (uvicorn) the same way.

    Args:
        fmt: ``json``, ``console``, or ``auto`` (console on a TTY, else JSON).
        level: minimum level name.
        secrets: values to redact from every log line.
        stream: where lines go; standard error by default.
    """
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and hasattr(out, "isatty") and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    redactor = _Redactor(secrets)
    common: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*common, structlog.processors.format_exc_info, redactor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = StdlibHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*common, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in QUIET_LIBRARIES:
        # Their free-text lines (one per HTTP call, one per SQL statement) would bury
        # our own events, which say the same with the event and contact ids bound.
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str) -> Any:
    """A structlog logger named after its module."""
    return structlog.get_logger(name)


_REQUEST_PREFIX = f"{os.getpid():x}-"
_request_counter = itertools.count(1)


def request_id(scope: Scope) -> str:
    """The request's id for its log lines: the caller's ``X-Request-Id`` when it is short
    and plain (a proxy's id then ties both logs together), else ``<pid>-<counter>``,
    unique in the process and cheaper than a UUID."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _SAFE_REQUEST_ID.fullmatch(value):
            return str(value.decode("ascii"))
    return f"{_REQUEST_PREFIX}{next(_request_counter):x}"


class RequestIdMiddleware:
    """Binds :func:`request_id` to every log line written while a request is handled.

    uvicorn runs each request in its own context, so the binding never leaks into another
    request or the dispatcher. The webhook is served ahead of this middleware (see
    :class:`receiver.web.app.StagesyncApp`) and names its request id in its own lines.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bind the id around the wrapped app for HTTP requests."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # bind/reset rather than bound_contextvars(): a third of the cost on the hot path.
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id(scope))
        try:
            await self.app(scope, receive, send)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
