"""Build the configured target."""

from __future__ import annotations

from typing import Protocol

import httpx

from receiver.ops.metrics import Metrics
from receiver.settings import Settings
from receiver.targets.base import Target
from receiver.targets.dry_run import DryRunTarget, RecordStore


class TargetFactory(Protocol):
    """Builds a target: :func:`make_target`'s signature."""

    def __call__(
        self, settings: Settings, *, store: RecordStore, http: httpx.AsyncClient, metrics: Metrics
    ) -> Target: ...


def make_target(
    settings: Settings, *, store: RecordStore, http: httpx.AsyncClient, metrics: Metrics
) -> Target:
    """The target named by ``settings.target``, wired to its collaborators."""
    if settings.target == "salesforce":
        from receiver.targets.salesforce.target import SalesforceConfig, SalesforceTarget
        from receiver.targets.salesforce.usage import UsageLogger

        config = SalesforceConfig.from_settings(settings.target_settings)
        return SalesforceTarget(
            config=config, http=http, on_call=metrics.target_call, on_limit_info=UsageLogger()
        )
    if settings.target == "dynamics":
        from receiver.targets.dynamics.target import DynamicsTarget

        return DynamicsTarget(
            settings=settings.target_settings, http=http, on_call=metrics.target_call
        )
    if settings.target == "zoho":
        from receiver.targets.zoho.target import ZohoTarget

        return ZohoTarget(settings=settings.target_settings, http=http, on_call=metrics.target_call)
    if settings.target == "webhook":
        from receiver.targets.webhook.target import WebhookTarget

        return WebhookTarget(
            settings=settings.target_settings, http=http, on_call=metrics.target_call
        )
    return DryRunTarget(store=store)
