"""The webhook target's settings: the ``[webhook]`` table and ``STAGESYNC_WEBHOOK_*``."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from receiver.targets.settings import EnvOverFileSettings, check_url, strip_secret
from receiver.targets.webhook.signing import check_secret


class WebhookSettings(EnvOverFileSettings):
    """Where the decisions are POSTed and the secret they are signed with."""

    model_config = SettingsConfigDict(
        env_prefix="STAGESYNC_WEBHOOK_", extra="forbid", frozen=True, env_ignore_empty=True
    )
    env_prefix: ClassVar[str] = "STAGESYNC_WEBHOOK_"

    url: str | None = None
    secret: SecretStr | None = None
    #: POSTs in flight at once, over all dispatch workers.
    max_concurrency: int = Field(10, ge=1, le=100)
    #: Records one dispatch round takes; each is still its own POST.
    batch_size: int = Field(50, ge=1, le=500)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return check_url(value)

    @field_validator("secret", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return strip_secret(value)

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret(value.get_secret_value())
        return value

    def problems(self) -> list[str]:
        """What is missing for this target to run, one line per problem."""
        problems = []
        if self.url is None:
            problems.append("STAGESYNC_WEBHOOK_URL: required (where to POST each decision)")
        if self.secret is None:
            problems.append(
                "STAGESYNC_WEBHOOK_SECRET: required (a whsec_ secret: 'whsec_' and 24 to 64"
                " random bytes in base64)"
            )
        return problems
