"""Settings: ``STAGESYNC_*`` environment variables over an optional TOML file.

The environment wins over the file. Problems are collected and raised together as
one :class:`~receiver.errors.ConfigError`, one line per problem, so start-up can
print them all and stop without a traceback.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from receiver.errors import ConfigError

ENV_PREFIX = "STAGESYNC_"
DEFAULT_LEAD_STAGES = ["lead", "marketingqualifiedlead", "salesqualifiedlead"]
DEFAULT_CONTACT_STAGES = ["opportunity", "customer", "evangelist"]
TARGETS = ("dry-run", "salesforce")
# Tables in the TOML file whose keys become ``<table>_<key>`` settings.
TARGET_TABLES = ("salesforce",)

StageList = Annotated[list[str], NoDecode]


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [str(part).strip() for part in value if str(part).strip()]
    return value


def _check_url(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"not a valid {'/'.join(schemes)} URL: {value!r}")
    return value.rstrip("/") if parts.path in ("", "/") else value


SECRET_FIELDS = (
    "hubspot_client_secret",
    "hubspot_access_token",
    "admin_token",
    "salesforce_access_token",
    "salesforce_client_secret",
    "salesforce_refresh_token",
)
# Sent (or compared) as an HTTP header value: a space or a control character would make
# the HTTP client fail at the first call instead of at start-up.
HEADER_SECRET_FIELDS = ("hubspot_access_token", "admin_token", "salesforce_access_token")


class Settings(BaseSettings):
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
    database_url: str = "sqlite:///stagesync.db"
    target: Literal["dry-run", "salesforce"] = "dry-run"
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
    host: str = Field("127.0.0.1", min_length=1, description="address serve listens on")
    port: int = Field(8000, ge=1, le=65535, description="port serve listens on")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    salesforce_instance_url: str | None = None
    salesforce_access_token: SecretStr | None = None
    salesforce_client_id: str | None = None
    salesforce_client_secret: SecretStr | None = None
    salesforce_refresh_token: SecretStr | None = None
    salesforce_token_url: str = "https://login.salesforce.com/services/oauth2/token"
    salesforce_api_version: str = "v62.0"
    salesforce_external_id_field: str = "HubSpot_Contact_ID__c"
    salesforce_max_concurrency: int = Field(10, ge=1)

    # Decoded here rather than by pydantic-settings, whose JSON error would stop
    # validation and hide every other problem.
    mapping: Annotated[dict[str, dict[str, str]], NoDecode] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Values given to the constructor come from the TOML file: the environment wins.
        return (env_settings, init_settings)

    @field_validator("lead_stages", "contact_stages", mode="before")
    @classmethod
    def _stages(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("lead_stages", "contact_stages")
    @classmethod
    def _stages_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one lifecycle stage")
        return list(dict.fromkeys(value))

    @field_validator("hubspot_api_url", "public_url", "salesforce_instance_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("http", "https"))

    @field_validator("salesforce_token_url")
    @classmethod
    def _token_url(cls, value: str) -> str:
        if _check_url(value, ("http", "https")) is None:
            raise ValueError("must be an http/https URL, not empty")
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
        # A secret mounted from a file usually ends with a newline.
        return value.strip() if isinstance(value, str) else value

    @field_validator(*HEADER_SECRET_FIELDS)
    @classmethod
    def _header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value() if value is not None else ""
        if text and not (text.isascii() and text.isprintable() and " " not in text):
            # Never the value itself: this line is printed.
            raise ValueError("must be printable ASCII without spaces (it is sent as a header)")
        return value

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

    def secret_values(self) -> list[str]:
        """Every secret value set, for log redaction."""
        values = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                values.append(value.get_secret_value())
        return values


def _env_name(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "settings"
    head = str(loc[0])
    if head == "mapping":
        return "[mapping." + ".".join(str(p) for p in loc[1:]) + "]" if loc[1:] else "[mapping]"
    return ENV_PREFIX + head.upper()


def _problems(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        name = _env_name(tuple(item["loc"]))
        if item["type"] == "missing":
            lines.append(f"{name}: required but not set")
        elif item["type"] == "extra_forbidden":
            lines.append(f"{name}: unknown setting")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{name}: {msg}")
    return lines


def read_toml(path: str | Path) -> dict[str, Any]:
    """Flatten a TOML config file into setting names (``[salesforce] x`` -> ``salesforce_x``)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"config file {path}: not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {path}: not valid TOML ({exc})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config file {path}: not UTF-8 text, as TOML must be"]) from None
    except OSError as exc:
        raise ConfigError([f"config file {path}: cannot be read ({exc.strerror})"]) from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = key.lower()
        if key in TARGET_TABLES and isinstance(value, dict):
            for sub, subvalue in value.items():
                flat[f"{key}_{sub.lower()}"] = subvalue
        else:
            flat[key] = value
    return flat


def _overlap(lead: Any, contact: Any) -> list[str]:
    lead, contact = _split_list(lead), _split_list(contact)
    if not isinstance(lead, list) or not isinstance(contact, list):
        return []
    both = [s for s in lead if s in contact]
    if not both:
        return []
    unique = list(dict.fromkeys(both))
    names = ", ".join(repr(s) for s in unique)
    which = f"stage {names} is" if len(unique) == 1 else f"stages {names} are"
    return [
        f"STAGESYNC_LEAD_STAGES / STAGESYNC_CONTACT_STAGES: {which} in both sets;"
        " a stage syncs as a Lead or as a Contact, not both"
    ]


def _blank_stage_lists(env: Mapping[str, str]) -> list[str]:
    # Empty variables count as unset elsewhere, but an explicitly empty stage list
    # falling back to the defaults would sync stages the user meant to switch off.
    return [
        f"{ENV_PREFIX}{name}: must name at least one lifecycle stage"
        for name in ("LEAD_STAGES", "CONTACT_STAGES")
        if ENV_PREFIX + name in env and not _split_list(env[ENV_PREFIX + name])
    ]


def _cross_checks(settings: Settings) -> list[str]:
    problems = _overlap(settings.lead_stages, settings.contact_stages)
    if settings.retry_max_s < settings.retry_base_s:
        problems.append("STAGESYNC_RETRY_MAX_S: must not be smaller than STAGESYNC_RETRY_BASE_S")
    if settings.target == "salesforce":
        has_token = settings.salesforce_access_token is not None
        refresh = (
            settings.salesforce_client_id,
            settings.salesforce_client_secret,
            settings.salesforce_refresh_token,
        )
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
        if settings.salesforce_instance_url is None and not has_token and not all(refresh):
            problems.append("STAGESYNC_SALESFORCE_INSTANCE_URL: required")
        if settings.salesforce_instance_url is None and has_token and not all(refresh):
            problems.append(
                "STAGESYNC_SALESFORCE_INSTANCE_URL: required with a static access token"
            )
    if settings.promotion == "convert":
        problems.append(
            f"STAGESYNC_PROMOTION: 'convert' is not supported by the {settings.target} target;"
            " use 'create-contact'"
        )
    return problems


# STAGESYNC_* variables that are not settings but are read on their own.
OTHER_VARIABLES = ("CONFIG", "TEST_POSTGRES_DSN")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``STAGESYNC_*`` variable that names no setting, with the
    closest real name: a misspelt variable would otherwise be ignored without a word."""
    known = [name.upper() for name in Settings.model_fields] + list(OTHER_VARIABLES)
    warnings = []
    for key in sorted(environ):
        name = key.removeprefix(ENV_PREFIX)
        if not key.startswith(ENV_PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        warnings.append(f"{key} is not a stagesync setting and is ignored{hint}")
    return warnings


def load_settings(
    config_path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from the TOML file (if any) and the environment.

    Raises:
        ConfigError: with one line per problem.
    """
    env = os.environ if environ is None else environ
    path = config_path or env.get(ENV_PREFIX + "CONFIG")
    file_values = read_toml(path) if path else {}
    file_values.pop("config", None)
    blank = _blank_stage_lists(env)
    saved = None
    if environ is not None:
        saved = dict(os.environ)
        for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            del os.environ[key]
        os.environ.update({k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})
    try:
        settings = Settings(**file_values)
    except ValidationError as exc:
        # Field errors stop validation before the cross checks; still report an overlap.
        raw = {**file_values, **{k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()}}
        lead = raw.get("lead_stages", DEFAULT_LEAD_STAGES)
        contact = raw.get("contact_stages", DEFAULT_CONTACT_STAGES)
        problems = _problems(exc)
        problems += [p for p in blank if p not in problems]
        raise ConfigError(problems + _overlap(lead, contact)) from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)
    problems = blank + _cross_checks(settings)
    if problems:
        raise ConfigError(problems)
    return settings
