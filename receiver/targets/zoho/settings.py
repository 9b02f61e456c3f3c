"""The Zoho CRM target's settings: the ``[zoho]`` table and ``STAGESYNC_ZOHO_*``."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from receiver.targets.settings import EnvOverFileSettings, check_url, strip_secret

DEFAULT_ACCOUNTS_URL = "https://accounts.zoho.com"
DEFAULT_EXTERNAL_ID_FIELD = "HubSpot_Contact_ID"
#: Records one upsert call takes (Zoho's limit).
UPSERT_LIMIT = 100


class ZohoSettings(EnvOverFileSettings):
    """The data centre's accounts server and the self client stagesync refreshes with."""

    model_config = SettingsConfigDict(
        env_prefix="STAGESYNC_ZOHO_", extra="forbid", frozen=True, env_ignore_empty=True
    )
    env_prefix: ClassVar[str] = "STAGESYNC_ZOHO_"

    accounts_url: str = DEFAULT_ACCOUNTS_URL
    client_id: str | None = None
    client_secret: SecretStr | None = None
    refresh_token: SecretStr | None = None
    api_domain: str | None = None
    api_version: str = "v8"
    external_id_field: str = DEFAULT_EXTERNAL_ID_FIELD
    #: Zoho allows 5 (Free) to 25 (Ultimate) concurrent calls per org.
    max_concurrency: int = Field(5, ge=1, le=25)
    batch_size: int = Field(UPSERT_LIMIT, ge=1, le=UPSERT_LIMIT)

    @field_validator("api_domain")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return check_url(value)

    @field_validator("accounts_url")
    @classmethod
    def _accounts_url(cls, value: str) -> str:
        checked = check_url(value)
        if checked is None:
            raise ValueError("must be an http/https URL, not empty")
        return checked

    @field_validator("client_secret", "refresh_token", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return strip_secret(value)

    @field_validator("external_id_field")
    @classmethod
    def _api_name(cls, value: str) -> str:
        if not value.replace("_", "").isalnum():
            raise ValueError("must be a field API name (letters, digits, underscores)")
        return value

    def problems(self) -> list[str]:
        """What is missing for this target to run, one line per problem."""
        problems = []
        if self.client_id is None:
            problems.append("STAGESYNC_ZOHO_CLIENT_ID: required (the self client's id)")
        if self.client_secret is None:
            problems.append("STAGESYNC_ZOHO_CLIENT_SECRET: required (the self client's secret)")
        if self.refresh_token is None:
            problems.append(
                "STAGESYNC_ZOHO_REFRESH_TOKEN: required (a self client's, for the Leads and"
                " Contacts scopes)"
            )
        return problems
