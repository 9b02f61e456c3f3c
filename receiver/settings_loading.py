"""Loading the settings: ``STAGESYNC_*`` environment variables over an optional TOML file.

The environment wins over the file. Problems are collected and raised together as
one :class:`~receiver.errors.ConfigError`, one line per problem, so start-up can
print them all and stop without a traceback: the fields' own checks, the chosen
target's settings (and those of any target given settings), and the checks across
fields. A variable that names no setting is warned about, with the closest name.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from receiver.errors import ConfigError
from receiver.settings import (
    DEFAULT_CONTACT_STAGES,
    DEFAULT_LEAD_STAGES,
    ENV_PREFIX,
    Settings,
    split_list,
)
from receiver.targets.registry import CONVERTING_TARGETS, TARGET_SETTINGS, table_name


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
    lead, contact = split_list(lead), split_list(contact)
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
        if ENV_PREFIX + name in env and not split_list(env[ENV_PREFIX + name])
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
