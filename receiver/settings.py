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

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from receiver.errors import ConfigError
from receiver.targets.registry import CONVERTING_TARGETS, TARGET_SETTINGS, table_name
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


def _split_list(value: Any) -> Any:
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
        return _split_list(value)

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


def known_env_names() -> set[str]:
    """Every ``STAGESYNC_*`` variable a setting reads, the targets' included."""
    names = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for model in TARGET_SETTINGS.values():
        if model is not None:
            prefix = getattr(model, "env_prefix", ENV_PREFIX)
            names |= {prefix + name.upper() for name in model.model_fields}
    return names


def _env_name(loc: tuple[Any, ...], prefix: str) -> str:
    if not loc:
        return "settings"
    head = str(loc[0])
    if head == "mapping" and prefix == ENV_PREFIX:
        return "[mapping." + ".".join(str(p) for p in loc[1:]) + "]" if loc[1:] else "[mapping]"
    return prefix + head.upper()


def _problems(error: ValidationError, prefix: str = ENV_PREFIX) -> list[str]:
    lines = []
    for item in error.errors():
        name = _env_name(tuple(item["loc"]), prefix)
        if item["type"] == "missing":
            lines.append(f"{name}: required but not set")
        elif item["type"] == "extra_forbidden":
            lines.append(f"{name}: unknown setting")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{name}: {msg}")
    return lines


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file's settings, keys in lower case; a target's table stays a table."""
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
    tables = {table_name(name) for name, model in TARGET_SETTINGS.items() if model is not None}
    values: dict[str, Any] = {}
    for key, value in data.items():
        key = key.lower()
        if key in tables and isinstance(value, dict):
            value = {sub.lower(): subvalue for sub, subvalue in value.items()}
        values[key] = value
    return values


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
    if settings.target_settings is not None:
        problems += settings.target_settings.problems()
    if settings.promotion == "convert" and settings.target not in CONVERTING_TARGETS:
        problems.append(
            f"STAGESYNC_PROMOTION: 'convert' is not supported by the {settings.target} target;"
            " use 'create-contact'"
        )
    return problems


def _target_settings(
    file_values: Mapping[str, Any], tables: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[list[str], Any]:
    """Validate each target's settings that are given, and the chosen target's always.

    A table or variables for a target not chosen are still checked, so a typo there is
    reported now rather than on the day that target is switched on.
    """
    chosen = str(env.get(ENV_PREFIX + "TARGET") or file_values.get("target") or "dry-run")
    problems: list[str] = []
    chosen_settings = None
    for name, model in TARGET_SETTINGS.items():
        if model is None:
            continue
        table = tables.get(name)
        prefix = getattr(model, "env_prefix", ENV_PREFIX)
        given = table is not None or any(k.startswith(prefix) for k in env)
        if name != chosen and not given:
            continue
        if table is not None and not isinstance(table, dict):
            problems.append(f"[{table_name(name)}]: must be a table")
            continue
        try:
            validated = model(**(table or {}))
        except ValidationError as exc:
            problems += _problems(exc, prefix)
            continue
        if name == chosen:
            chosen_settings = validated
    return problems, chosen_settings


# STAGESYNC_* variables that are not settings but are read on their own.
OTHER_VARIABLES = ("CONFIG", "TEST_POSTGRES_DSN")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``STAGESYNC_*`` variable that names no setting, with the
    closest real name: a misspelt variable would otherwise be ignored without a word."""
    known = [name.removeprefix(ENV_PREFIX) for name in sorted(known_env_names())]
    known += list(OTHER_VARIABLES)
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
    tables = {
        name: file_values.pop(table_name(name), None)
        for name, model in TARGET_SETTINGS.items()
        if model is not None
    }
    blank = _blank_stage_lists(env)
    saved = None
    if environ is not None:
        saved = dict(os.environ)
        for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            del os.environ[key]
        os.environ.update({k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})
    try:
        target_problems, target_settings = _target_settings(file_values, tables, env)
        settings = Settings(**file_values)
    except ValidationError as exc:
        # Field errors stop validation before the cross checks; still report an overlap.
        raw = {**file_values, **{k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()}}
        lead = raw.get("lead_stages", DEFAULT_LEAD_STAGES)
        contact = raw.get("contact_stages", DEFAULT_CONTACT_STAGES)
        problems = _problems(exc)
        problems += [p for p in blank if p not in problems]
        problems += [p for p in target_problems if p not in problems]
        raise ConfigError(problems + _overlap(lead, contact)) from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)
    settings._target_settings = target_settings
    if target_problems:
        raise ConfigError(blank + target_problems)
    problems = blank + _cross_checks(settings)
    if problems:
        raise ConfigError(problems)
    return settings
