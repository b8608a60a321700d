"""Settings: one validated, frozen object built once at start-up.

Sources, highest first: explicit arguments (the CLI), the environment, a ``.env`` file in
the working directory, defaults. ``KEY4U_*`` variables win over their ``OPENAI_*``
fallbacks, so any OpenAI-compatible gateway works with the variables its users already set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "https://api.key4u.shop/v1"
DEFAULT_MODEL = "gpt-4.1"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KEY4U_API_KEY", "OPENAI_API_KEY", "api_key"),
        description="Bearer key for the gateway. Optional: the local tools need none.",
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        validation_alias=AliasChoices("KEY4U_BASE_URL", "OPENAI_BASE_URL", "base_url"),
        description="Base URL of the OpenAI-compatible API, including /v1.",
    )
    model: str = Field(
        default=DEFAULT_MODEL,
        validation_alias=AliasChoices("KEY4U_MODEL", "model"),
        min_length=1,
        description="Model used by key4u_respond when the call names none.",
    )
    log_level: LogLevel = Field(
        default="INFO", validation_alias=AliasChoices("KEY4U_LOG_LEVEL", "log_level")
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) URL such as {DEFAULT_BASE_URL}, got {value!r}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def has_key(self) -> bool:
        return self.api_key is not None

    def secrets(self) -> list[str]:
        """Values that must never be printed or logged."""
        return [self.api_key.get_secret_value()] if self.api_key else []


def load_settings(env_file: Path | None = None, **overrides: object) -> Settings:
    """Build the settings; ``overrides`` (from the CLI) win over every other source."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    if env_file is not None:
        return Settings(_env_file=env_file, **clean)  # type: ignore[call-arg]
    return Settings(**clean)  # type: ignore[call-arg]
