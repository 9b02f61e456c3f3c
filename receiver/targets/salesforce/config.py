"""The Salesforce target's connection settings, as it uses them: secrets revealed, kept
out of ``repr``. Built from the ``[salesforce]`` table's model, or directly by tests and
benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import SecretStr

from receiver.targets.salesforce.budget import RECHECK_S
from receiver.targets.salesforce.fields import DEFAULT_EXTERNAL_ID_FIELD
from receiver.targets.salesforce.settings import DEFAULT_TOKEN_URL, SalesforceSettings


@dataclass(frozen=True)
class SalesforceConfig:
    """Connection settings; secrets are left out of ``repr``."""

    instance_url: str | None
    access_token: str | None = field(repr=False)
    client_id: str | None
    client_secret: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    token_url: str = DEFAULT_TOKEN_URL
    api_version: str = "v62.0"
    external_id_field: str = DEFAULT_EXTERNAL_ID_FIELD
    max_concurrency: int = 10
    api_budget: float = 0.8
    api_budget_recheck_s: float = RECHECK_S
    converted_status: str | None = None
    bulk_threshold: int = 2000

    @classmethod
    def from_settings(cls, settings: SalesforceSettings) -> SalesforceConfig:
        """The connection settings of the ``[salesforce]`` table and its variables."""

        def reveal(secret: SecretStr | None) -> str | None:
            return secret.get_secret_value() if secret is not None else None

        return cls(
            instance_url=settings.instance_url,
            access_token=reveal(settings.access_token),
            client_id=settings.client_id,
            client_secret=reveal(settings.client_secret),
            refresh_token=reveal(settings.refresh_token),
            token_url=settings.token_url,
            api_version=settings.api_version,
            external_id_field=settings.external_id_field,
            max_concurrency=settings.max_concurrency,
            api_budget=settings.api_budget,
            api_budget_recheck_s=settings.api_budget_recheck_s,
            converted_status=settings.converted_status,
            bulk_threshold=settings.bulk_threshold,
        )
