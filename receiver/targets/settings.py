"""What every target's settings model shares: the checks, and the registry of targets.

Each target owns a pydantic settings model read from its own TOML table and its own
``STAGESYNC_<TARGET>_`` variables. The core settings know targets only through
:data:`TARGET_SETTINGS`, which imports nothing but those models.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource


class EnvOverFileSettings(BaseSettings):
    """Settings whose constructor values come from the TOML file, and the environment wins."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


class TargetSettings(Protocol):
    """A target's settings model (a ``pydantic_settings.BaseSettings``)."""

    env_prefix: ClassVar[str]  # e.g. ``STAGESYNC_SALESFORCE_``

    def problems(self) -> list[str]:
        """Checks across fields for this target to run, one line per problem."""
        ...


def check_url(value: str | None, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    """``value`` as a URL of one of ``schemes`` without a trailing slash; empty is None."""
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"not a valid {'/'.join(schemes)} URL: {value!r}")
    return value.rstrip("/") if parts.path in ("", "/") else value


def strip_secret(value: Any) -> Any:
    """A secret mounted from a file usually ends with a newline: drop the blanks around it."""
    return value.strip() if isinstance(value, str) else value


def check_header_secret(value: SecretStr | None) -> SecretStr | None:
    """Refuse a secret that cannot be an HTTP header value, without echoing it.

    A space or a control character would make the HTTP client fail at the first call
    instead of at start-up.
    """
    text = value.get_secret_value() if value is not None else ""
    if text and not (text.isascii() and text.isprintable() and " " not in text):
        raise ValueError("must be printable ASCII without spaces (it is sent as a header)")
    return value


def secret_values(model: object) -> list[str]:
    """Every secret value set on a settings model, for redaction."""
    values = []
    for name in type(model).model_fields:  # type: ignore[attr-defined]
        value = getattr(model, name)
        if isinstance(value, SecretStr) and value.get_secret_value():
            values.append(value.get_secret_value())
    return values
