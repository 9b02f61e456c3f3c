"""Logging setup, in one place: structlog, JSON in production and console on a TTY.

Event names are stable snake_case (``event_synced``, ``upsert_failed``). Known secret
values are redacted from every line as a last line of defence: code should never log a
secret in the first place, but a URL or an upstream message might carry one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"


class _Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._scrub(v) for v in value)
        return value

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self.secrets:
            return event_dict
        for key, value in event_dict.items():
            event_dict[key] = self._scrub(value)
        return event_dict


def configure_logging(
    fmt: str = "auto", level: str = "info", secrets: Iterable[str] = (), stream: Any = None
) -> None:
    """Configure structlog and the standard library logging it writes through.

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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _Redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A structlog logger named after its module."""
    return structlog.get_logger(name)
