"""The Salesforce target's settings: the ``[salesforce]`` table and ``STAGESYNC_SALESFORCE_*``."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from receiver.targets.salesforce.fields import DEFAULT_EXTERNAL_ID_FIELD
from receiver.targets.settings import (
    EnvOverFileSettings,
    check_header_secret,
    check_url,
    strip_secret,
)

DEFAULT_TOKEN_URL = "https://login.salesforce.com/services/oauth2/token"


class SalesforceSettings(EnvOverFileSettings):
    """Where the org is and how stagesync signs in to it."""

    model_config = SettingsConfigDict(
        env_prefix="STAGESYNC_SALESFORCE_", extra="forbid", frozen=True, env_ignore_empty=True
    )
    env_prefix: ClassVar[str] = "STAGESYNC_SALESFORCE_"

    instance_url: str | None = None
    access_token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    refresh_token: SecretStr | None = None
    token_url: str = DEFAULT_TOKEN_URL
    api_version: str = "v62.0"
    external_id_field: str = DEFAULT_EXTERNAL_ID_FIELD
    max_concurrency: int = Field(10, ge=1)
    #: Share of the org's daily API limit above which stagesync stops calling Salesforce.
    api_budget: float = Field(0.8, gt=0, le=1)
    #: Seconds between two ``GET /limits`` re-checks while the budget is exceeded.
    api_budget_recheck_s: float = Field(900.0, gt=0)
    #: The Lead status ``PROMOTION=convert`` gives; None: the org's converted status.
    converted_status: str | None = None
    #: Records ready at once from which upserts go through Bulk API 2.0; 0 turns it off.
    bulk_threshold: int = Field(2000, ge=0)

    @field_validator("instance_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return check_url(value)

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, value: str) -> str:
        if check_url(value) is None:
            raise ValueError("must be an http/https URL, not empty")
        return value

    @field_validator("access_token", "client_secret", "refresh_token", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return strip_secret(value)

    @field_validator("access_token")
    @classmethod
    def _header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        return check_header_secret(value)

    def problems(self) -> list[str]:
        """What is missing for this target to run, one line per problem."""
        has_token = self.access_token is not None
        refresh = (self.client_id, self.client_secret, self.refresh_token)
        problems = []
        if not has_token and not all(refresh):
            problems.append(
                "STAGESYNC_SALESFORCE_ACCESS_TOKEN: required, or set CLIENT_ID, CLIENT_SECRET"
                " and REFRESH_TOKEN for the OAuth refresh flow"
            )
        if has_token and not all(refresh) and any(refresh):
            problems.append(
                "STAGESYNC_SALESFORCE_REFRESH_TOKEN: the refresh flow needs CLIENT_ID,"
                " CLIENT_SECRET and REFRESH_TOKEN together"
            )
        if self.instance_url is None and not has_token and not all(refresh):
            problems.append("STAGESYNC_SALESFORCE_INSTANCE_URL: required")
        if self.instance_url is None and has_token and not all(refresh):
            problems.append(
                "STAGESYNC_SALESFORCE_INSTANCE_URL: required with a static access token"
            )
        return problems
