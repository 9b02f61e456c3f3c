"""Build the configured target."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from receiver.ops.logging import get_logger
from receiver.ops.metrics import Metrics
from receiver.settings import Settings
from receiver.store.base import EventStore
from receiver.targets.base import Target
from receiver.targets.dry_run import DryRunTarget

log = get_logger("receiver.targets")

#: Seconds between two ``salesforce_api_usage`` log lines: every call reports usage.
USAGE_LOG_INTERVAL_S = 60.0
#: Share of the daily API allocation from which the usage line is a warning.
USAGE_WARN_SHARE = 0.9


class UsageLogger:
    """Logs Salesforce API usage (``Sforce-Limit-Info``) at most once per interval.

    The first report is logged at once; later ones only when ``interval_s`` has passed.
    """

    def __init__(
        self,
        interval_s: float = USAGE_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None

    def __call__(self, used: int, limit: int) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            return
        self._last = now
        share = used / limit if limit > 0 else 0.0
        emit = log.warning if share >= USAGE_WARN_SHARE else log.info
        emit("salesforce_api_usage", used=used, limit=limit, percent=round(100 * share, 1))


def _secret(value: object) -> str | None:
    get = getattr(value, "get_secret_value", None)
    return get() if get else None


def make_target(
    settings: Settings, *, store: EventStore, http: httpx.AsyncClient, metrics: Metrics
) -> Target:
    """The target named by ``settings.target``, wired to its collaborators."""
    if settings.target == "salesforce":
        from receiver.targets.salesforce.target import SalesforceConfig, SalesforceTarget

        config = SalesforceConfig(
            instance_url=settings.salesforce_instance_url,
            access_token=_secret(settings.salesforce_access_token),
            client_id=settings.salesforce_client_id,
            client_secret=_secret(settings.salesforce_client_secret),
            refresh_token=_secret(settings.salesforce_refresh_token),
            token_url=settings.salesforce_token_url,
            api_version=settings.salesforce_api_version,
            external_id_field=settings.salesforce_external_id_field,
            max_concurrency=settings.salesforce_max_concurrency,
        )
        return SalesforceTarget(
            config=config, http=http, on_call=metrics.target_call, on_limit_info=UsageLogger()
        )
    return DryRunTarget(store=store)
