"""Build the configured target."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from receiver.ops.metrics import Metrics
from receiver.targets.base import Target
from receiver.targets.dry_run import DryRunTarget, RecordStore


class TargetFactory(Protocol):
    """Builds a target: :func:`make_target`'s signature."""

    def __call__(
        self,
        name: str,
        config: Any,
        *,
        store: RecordStore,
        http: httpx.AsyncClient,
        metrics: Metrics,
    ) -> Target: ...


def make_target(
    name: str,
    config: Any,
    *,
    store: RecordStore,
    http: httpx.AsyncClient,
    metrics: Metrics,
) -> Target:
    """The target called ``name`` with its settings model ``config``, wired to its collaborators.

    ``name`` and ``config`` are ``Settings.target`` and ``Settings.target_settings``.
    """
    if name == "salesforce":
        from receiver.targets.salesforce.config import SalesforceConfig
        from receiver.targets.salesforce.target import SalesforceTarget
        from receiver.targets.salesforce.usage import UsageLogger

        config = SalesforceConfig.from_settings(config)
        return SalesforceTarget(
            config=config, http=http, on_call=metrics.target_call, on_limit_info=UsageLogger()
        )
    if name == "dynamics":
        from receiver.targets.dynamics.target import DynamicsTarget

        return DynamicsTarget(settings=config, http=http, on_call=metrics.target_call)
    if name == "zoho":
        from receiver.targets.zoho.target import ZohoTarget

        return ZohoTarget(settings=config, http=http, on_call=metrics.target_call)
    if name == "webhook":
        from receiver.targets.webhook.target import WebhookTarget

        return WebhookTarget(settings=config, http=http, on_call=metrics.target_call)
    return DryRunTarget(store=store)
