"""The targets stagesync knows, by the name ``TARGET`` takes, with their settings models.

Adding a target: its package under ``receiver/targets/``, its settings model here, and
its constructor in :mod:`receiver.targets.factory`. Only settings models are imported
here, so the core settings can read this without pulling in any HTTP client.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings

from receiver.targets.dynamics.settings import DynamicsSettings
from receiver.targets.salesforce.settings import SalesforceSettings
from receiver.targets.webhook.settings import WebhookSettings
from receiver.targets.zoho.settings import ZohoSettings

#: Target name -> its settings model, or None for a target without settings.
TARGET_SETTINGS: dict[str, type[BaseSettings] | None] = {
    "dry-run": None,
    "salesforce": SalesforceSettings,
    "dynamics": DynamicsSettings,
    "zoho": ZohoSettings,
    "webhook": WebhookSettings,
}

#: Targets that can convert a Lead on promotion (``PROMOTION=convert``).
CONVERTING_TARGETS: frozenset[str] = frozenset({"salesforce"})


def table_name(target: str) -> str:
    """The TOML table of a target's settings: ``[salesforce]``."""
    return target.replace("-", "_")
