"""The core settings: every ``STAGESYNC_*`` variable but the targets' own, and what
each field accepts. :mod:`receiver.settings_loading` builds them from the environment
over an optional TOML file.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from receiver.targets.registry import TARGET_SETTINGS
from receiver.targets.settings import (
    EnvOverFileSettings,
    check_header_secret,
    check_url,
    secret_values,
    strip_secret,
)

ENV_PREFIX = "STAGESYNC_"
DEFAULT_LEAD_STAGES = ["lead", "marketingqualifiedlead", "salesqualifiedlead"]
DEFAULT_CONTACT_STAGES = ["opportunity", "customer", "evangelist"]
TARGETS = tuple(TARGET_SETTINGS)

StageList = Annotated[list[str], NoDecode]


def split_list(value: Any) -> Any:
    """A comma-separated text or a list as a list of its non-blank, stripped items."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [str(part).strip() for part in value if str(part).strip()]
    return value


SECRET_FIELDS = ("hubspot_client_secret", "hubspot_access_token", "admin_token")
# Sent (or compared) as an HTTP header value.
HEADER_SECRET_FIELDS = ("hubspot_access_token", "admin_token")


class Settings(EnvOverFileSettings):
    """Every setting of stagesync; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_ignore_empty=True
    )

    hubspot_client_secret: SecretStr
    hubspot_access_token: SecretStr | None = None
    hubspot_api_url: str = "https://api.hubapi.com"
    hubspot_rate_limit: int = Field(100, gt=0, description="HubSpot calls allowed per 10 s")
    public_url: str | None = None
    signature_max_age_s: int = Field(300, gt=0)
    lead_stages: StageList = Field(default_factory=lambda: list(DEFAULT_LEAD_STAGES))
    contact_stages: StageList = Field(default_factory=lambda: list(DEFAULT_CONTACT_STAGES))
    lead_sync: bool = True
    contact_sync: bool = True
    database_url: str = "sqlite:///stagesync.db"
    target: str = "dry-run"
    admin_token: SecretStr | None = None
    max_attempts: int = Field(10, ge=1)
    max_body_bytes: int = Field(1_048_576, gt=0)
    on_delete: Literal["ignore", "delete"] = "ignore"
    promotion: Literal["create-contact", "convert"] = "create-contact"
    retry_base_s: float = Field(5.0, gt=0)
    retry_max_s: float = Field(3600.0, gt=0)
    retention_days: int = Field(30, ge=0, description="0 keeps everything")
    # Off by default: the SPEC's /readyz checks the database and the dispatcher only, and
    # a backlog check would take every instance out of a load balancer during a CRM
    # outage or a long drain, while ingest still works.
    ready_max_pending_age_s: float = Field(0.0, ge=0, description="0 disables the check")
    dispatch_concurrency: int = Field(4, ge=1, description="target calls in flight")
    lease_s: float = Field(60.0, gt=0)
    # A secret: a Slack incoming-webhook URL lets anyone who has it post to the channel.
    alert_webhook_url: SecretStr | None = None
    alert_interval_s: float = Field(300.0, gt=0)
    alert_backlog_s: float = Field(1800.0, gt=0)
    reconcile_interval_s: float = Field(900.0, ge=0, description="0 turns reconciliation off")
    host: str = Field("127.0.0.1", min_length=1, description="address serve listens on")
    port: int = Field(8000, ge=1, le=65535, description="port serve listens on")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Decoded here rather than by pydantic-settings, whose JSON error would stop
    # validation and hide every other problem.
    mapping: Annotated[dict[str, dict[str, str]], NoDecode] = Field(default_factory=dict)

    @field_validator("lead_stages", "contact_stages", mode="before")
    @classmethod
    def _stages(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("lead_stages", "contact_stages")
    @classmethod
    def _stages_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one lifecycle stage")
        return list(dict.fromkeys(value))

    # The chosen target's own settings, validated by load_settings from its table and
    # its STAGESYNC_<TARGET>_ variables.
    _target_settings: Any = PrivateAttr(default=None)

    @field_validator("hubspot_api_url", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return check_url(value)

    @field_validator("alert_webhook_url")
    @classmethod
    def _alert_url(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value().strip() if value is not None else ""
        if not text:
            return None
        try:
            check_url(text)
        except ValueError:
            raise ValueError("must be an http or https URL") from None  # never echoed
        return SecretStr(text)

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        if value not in TARGET_SETTINGS:
            raise ValueError(f"must be one of {', '.join(TARGET_SETTINGS)}, not {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
            return value
        if value.startswith(("postgresql://", "postgres://")) and value.split("://", 1)[1].strip(
            "/"
        ):
            return value  # an empty host (postgresql:///db) means the local Unix socket
        raise ValueError("must be sqlite:///PATH or postgresql://USER@HOST/DB")

    @field_validator(*SECRET_FIELDS, mode="before")
    @classmethod
    def _strip_secret(cls, value: Any) -> Any:
        return strip_secret(value)

    @field_validator(*HEADER_SECRET_FIELDS)
    @classmethod
    def _header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        return check_header_secret(value)

    @field_validator("hubspot_client_secret")
    @classmethod
    def _secret_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("mapping", mode="before")
    @classmethod
    def _mapping_json(cls, value: Any) -> Any:
        if isinstance(value, str):  # from STAGESYNC_MAPPING; the TOML file gives tables
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("STAGESYNC_MAPPING must be a JSON object") from None
        if not isinstance(value, dict):
            return value  # pydantic says what it must be
        # Every problem of the mapping at once: pydantic would stop at the first table.
        problems = []
        unknown = sorted(set(value) - {"lead", "contact"})
        if unknown:
            problems.append(f"only [mapping.lead] and [mapping.contact] exist, not {unknown}")
        for kind, table in value.items():
            if kind in unknown:
                continue
            if not isinstance(table, dict):
                problems.append(f"[mapping.{kind}] must be a table of field = property")
                continue
            wrong = sorted(str(k) for k, v in table.items() if not isinstance(v, str))
            if wrong:
                problems.append(f"[mapping.{kind}] values must be text: {', '.join(wrong)}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @property
    def hubspot_token(self) -> str | None:
        """The HubSpot private-app token, or None."""
        token = self.hubspot_access_token
        return token.get_secret_value() if token else None

    @property
    def target_settings(self) -> Any:
        """The chosen target's settings model, or None for a target without settings."""
        return self._target_settings

    def secret_values(self) -> list[str]:
        """Every secret value set, the target's included, for redaction."""
        values = secret_values(self)
        if self._target_settings is not None:
            values += secret_values(self._target_settings)
        return values
