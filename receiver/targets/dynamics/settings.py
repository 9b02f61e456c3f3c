"""The Dynamics 365 target's settings: the ``[dynamics]`` table and ``STAGESYNC_DYNAMICS_*``."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from receiver.targets.settings import EnvOverFileSettings, check_url, strip_secret

DEFAULT_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
DEFAULT_ALTERNATE_KEY = "stagesync_hubspotcontactid"
#: Dataverse allows 52 concurrent requests per user; stay well below.
MAX_CONCURRENCY = 50


class DynamicsSettings(EnvOverFileSettings):
    """Which Dataverse environment, and the app registration stagesync signs in as."""

    model_config = SettingsConfigDict(
        env_prefix="STAGESYNC_DYNAMICS_", extra="forbid", frozen=True, env_ignore_empty=True
    )
    env_prefix: ClassVar[str] = "STAGESYNC_DYNAMICS_"

    url: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    token_url: str = DEFAULT_TOKEN_URL
    api_version: str = "v9.2"
    alternate_key: str = DEFAULT_ALTERNATE_KEY
    max_concurrency: int = Field(16, ge=1, le=MAX_CONCURRENCY)
    #: Upserts in one ``$batch`` request (Dataverse takes up to 1,000).
    batch_size: int = Field(200, ge=1, le=1000)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return check_url(value)

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, value: str) -> str:
        if check_url(value.replace("{tenant}", "tenant")) is None:
            raise ValueError("must be an http/https URL, not empty")
        return value

    @field_validator("client_secret", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return strip_secret(value)

    @field_validator("alternate_key")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not value.replace("_", "").isalnum():
            raise ValueError("must be a column logical name (letters, digits, underscores)")
        return value

    @property
    def resolved_token_url(self) -> str:
        """``TOKEN_URL`` with ``{tenant}`` replaced by ``TENANT_ID``."""
        return self.token_url.replace("{tenant}", self.tenant_id or "")

    def problems(self) -> list[str]:
        """What is missing for this target to run, one line per problem."""
        problems = []
        if self.url is None:
            problems.append(
                "STAGESYNC_DYNAMICS_URL: required (the environment, e.g. https://org.crm.dynamics.com)"
            )
        if self.tenant_id is None and "{tenant}" in self.token_url:
            problems.append("STAGESYNC_DYNAMICS_TENANT_ID: required (the Entra ID tenant)")
        if self.client_id is None:
            problems.append("STAGESYNC_DYNAMICS_CLIENT_ID: required (the app registration's id)")
        if self.client_secret is None:
            problems.append("STAGESYNC_DYNAMICS_CLIENT_SECRET: required (the app's client secret)")
        return problems
