"""Build the configured target."""

from __future__ import annotations

import httpx

from receiver.metrics import Metrics
from receiver.settings import Settings
from receiver.store.base import EventStore
from receiver.targets.base import Target
from receiver.targets.dry_run import DryRunTarget


def _secret(value: object) -> str | None:
    get = getattr(value, "get_secret_value", None)
    return get() if get else None


def make_target(
    settings: Settings, *, store: EventStore, http: httpx.AsyncClient, metrics: Metrics
) -> Target:
    """The target named by ``settings.target``, wired to its collaborators."""
    if settings.target == "salesforce":
        from receiver.targets.salesforce import SalesforceConfig, SalesforceTarget

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
        return SalesforceTarget(config=config, http=http, on_call=metrics.target_call)
    return DryRunTarget(store=store)
