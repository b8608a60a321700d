"""Settings: one validated, frozen object built once at start-up.

Sources, highest first: explicit arguments (the CLI), the environment, a ``.env`` file in
the working directory, defaults. ``KEY4U_*`` variables win over their ``OPENAI_*``
fallbacks, so any OpenAI-compatible gateway works with the variables its users already set.
Only those prefixed names are read (in any case): a ``MODEL`` or ``TIMEOUT`` some other tool
left in the shell is not a setting of this server.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator

from server.logs import url_password

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.key4u.shop/v1"
DEFAULT_MODEL = "gpt-4.1"

#: The variables a setting may come from start with one of these (matched in any case).
PREFIXES = ("KEY4U_", "OPENAI_")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseModel):
    """Every setting of the server, validated and frozen: gateway, retries, tool loop, downstream servers,
    HTTP transport and store.

    ``load_settings`` builds it from its sources; ``Settings(...)`` itself reads no variable.
    ``secrets()`` names the values that must never be printed or logged.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

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
    log_level: LogLevel = Field(default="INFO", validation_alias=AliasChoices("KEY4U_LOG_LEVEL", "log_level"))

    # The Responses client.
    stream: bool = Field(
        default=True,
        validation_alias=AliasChoices("KEY4U_STREAM", "stream"),
        description="Ask for SSE streams (true) or plain JSON replies (false).",
    )
    timeout: float = Field(
        default=120.0,
        gt=0,
        validation_alias=AliasChoices("KEY4U_TIMEOUT", "timeout"),
        description="Seconds to wait for the gateway's reply (between stream events).",
    )
    max_retries: int = Field(default=2, ge=0, le=10, validation_alias=AliasChoices("KEY4U_MAX_RETRIES", "max_retries"))
    retry_budget: float = Field(
        default=120.0,
        gt=0,
        validation_alias=AliasChoices("KEY4U_RETRY_BUDGET", "retry_budget"),
        description="Seconds one request may take across all its attempts and waits.",
    )
    retry_max_wait: float = Field(
        default=30.0,
        ge=0,
        validation_alias=AliasChoices("KEY4U_RETRY_MAX_WAIT", "retry_max_wait"),
        description="Longest Retry-After honoured; a longer one is reported, not waited.",
    )

    # The tool loop.
    deadline: float = Field(
        default=50.0,
        gt=0,
        validation_alias=AliasChoices("KEY4U_DEADLINE", "deadline"),
        description="Seconds before key4u_respond returns in_progress and keeps working.",
    )
    claim_lease: float = Field(
        default=15.0,
        ge=0.5,
        le=600,
        validation_alias=AliasChoices("KEY4U_CLAIM_LEASE", "claim_lease"),
        description="Seconds a running conversation's claim lasts unless renewed: after a crash, another "
        "process may continue it this long after the last renewal.",
    )
    tool_timeout: float = Field(default=60.0, gt=0, validation_alias=AliasChoices("KEY4U_TOOL_TIMEOUT", "tool_timeout"))
    ask_writes: bool = Field(
        default=True,
        validation_alias=AliasChoices("KEY4U_ASK_WRITES", "ask_writes"),
        description="Downstream tools not annotated read-only ask the person to approve each call, where the "
        "host can show a form (MCP elicitation); elsewhere, and when false, the call comes back as pending.",
    )
    approval_timeout: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("KEY4U_APPROVAL_TIMEOUT", "approval_timeout"),
        description="Seconds an approval form waits for the person; no answer counts as a denial.",
    )
    tool_concurrency: int = Field(
        default=16, ge=1, le=64, validation_alias=AliasChoices("KEY4U_TOOL_CONCURRENCY", "tool_concurrency")
    )
    max_result_chars: int | None = Field(
        default=None,
        ge=1000,
        validation_alias=AliasChoices("KEY4U_MAX_RESULT_CHARS", "max_result_chars"),
        description="Budget for key4u_respond's whole result (default: what the calling host passes on whole).",
    )
    max_reply_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=64 * 1024,
        validation_alias=AliasChoices("KEY4U_MAX_REPLY_BYTES", "max_reply_bytes"),
        description="Largest reply read from the gateway; a larger one is refused.",
    )
    heartbeat: float = Field(
        default=10.0,
        ge=0.1,
        le=60,
        validation_alias=AliasChoices("KEY4U_HEARTBEAT", "heartbeat"),
        description="Longest silence between progress reports while the model thinks (idle timeouts reset).",
    )
    turn_timeout: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        validation_alias=AliasChoices("KEY4U_TURN_TIMEOUT", "turn_timeout"),
        description="Longest time for one model reply, however the gateway streams it.",
    )
    api_style: Literal["auto", "responses", "chat"] = Field(
        default="auto",
        validation_alias=AliasChoices("KEY4U_API_STYLE", "api_style"),
        description="The model API: auto (per model: what the gateway advertises or serves, remembered), "
        "responses (/v1/responses) or chat (/v1/chat/completions).",
    )
    conversation_mode: Literal["replay", "previous_response_id"] = Field(
        default="replay",
        validation_alias=AliasChoices("KEY4U_CONVERSATION_MODE", "conversation_mode"),
        description="replay: stateless, store:false, full history each turn. previous_response_id: for gateways "
        "that pin sessions to one upstream account.",
    )
    prices: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KEY4U_PRICES", "prices"),
        description="A JSON or TOML file of model -> {input, output, cached} USD per million tokens (or per_call "
        "USD per request); its models' prices win over the gateway's published ones.",
    )
    group: str = Field(
        default="default",
        min_length=1,
        max_length=64,
        validation_alias=AliasChoices("KEY4U_GROUP", "group"),
        description="The key's group at the gateway (new-api), whose group ratio multiplies the published prices.",
    )
    mcp_servers: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KEY4U_MCP_SERVERS", "mcp_servers"),
        description="An mcpServers JSON file of downstream MCP servers.",
    )
    proxy: bool = Field(
        default=False,
        validation_alias=AliasChoices("KEY4U_PROXY", "proxy"),
        description="Also offer downstream servers' tools to this server's own MCP client.",
    )
    mcp_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KEY4U_MCP_TOKEN", "mcp_token"),
        description="Bearer token the HTTP transport requires.",
    )
    mcp_allowed_hosts: str | None = Field(
        default=None, validation_alias=AliasChoices("KEY4U_MCP_ALLOWED_HOSTS", "mcp_allowed_hosts")
    )
    mcp_allowed_origins: str | None = Field(
        default=None, validation_alias=AliasChoices("KEY4U_MCP_ALLOWED_ORIGINS", "mcp_allowed_origins")
    )
    mcp_max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        validation_alias=AliasChoices("KEY4U_MCP_MAX_REQUEST_BYTES", "mcp_max_request_bytes"),
    )
    mcp_header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        validation_alias=AliasChoices("KEY4U_MCP_HEADER_TIMEOUT", "mcp_header_timeout"),
        description="HTTP: seconds a connection has to send a complete request head (from connecting, or from the "
        "first byte of its next request), and the longest a request body may stall; then it is closed.",
    )
    mcp_keep_alive_timeout: int = Field(
        default=10,
        ge=1,
        le=300,
        validation_alias=AliasChoices("KEY4U_MCP_KEEP_ALIVE_TIMEOUT", "mcp_keep_alive_timeout"),
        description="HTTP: seconds an idle keep-alive connection is kept open after a response.",
    )
    mcp_max_connections: int = Field(
        default=512,
        ge=1,
        validation_alias=AliasChoices("KEY4U_MCP_MAX_CONNECTIONS", "mcp_max_connections"),
        description="HTTP: most open connections (a stateful MCP client holds two: its POSTs and its GET stream). "
        "Beyond it the longest-idle connection (no request in flight) is closed to make room, and when every "
        "connection has a request in flight a new one is refused (503).",
    )
    db_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KEY4U_DB_PATH", "db_path"),
        description="SQLite file for conversations (default: the user state directory).",
    )
    file_roots: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KEY4U_FILE_ROOTS", "file_roots"),
        description="Folders key4u_respond may read images and files from, separated by the path separator "
        "(default: your home and the current directory).",
    )
    db_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KEY4U_DB_URL", "db_url"),
        description="PostgreSQL for conversations, shared by replicas (postgresql://user:password@host/db); "
        "needs the [postgres] extra. Unset: the SQLite file.",
    )
    max_conversations: int = Field(
        default=1000, ge=1, validation_alias=AliasChoices("KEY4U_MAX_CONVERSATIONS", "max_conversations")
    )
    max_age_days: float = Field(default=30, gt=0, validation_alias=AliasChoices("KEY4U_MAX_AGE_DAYS", "max_age_days"))

    @field_validator("api_key", "mcp_token", mode="before")
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

    @field_validator("prices")
    @classmethod
    def _check_prices(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        from server.upstream.pricing import load_price_file  # only when the setting is used

        load_price_file(value)  # ValueError says what is wrong, and the variable is named with it
        return value

    @field_validator("group", mode="before")
    @classmethod
    def _strip_group(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def endpoint_memory(self) -> Path:
        """Which API each model answered on, kept next to the database."""
        return self.database.parent / "endpoints.json"

    @property
    def database(self) -> Path:
        if self.db_path is not None:
            return self.db_path
        return Path(platformdirs.user_state_dir("key4u-mcp", appauthor=False)) / "conversations.sqlite3"

    @property
    def servers_file(self) -> Path | None:
        """The downstream MCP servers file in use, if any."""
        if self.mcp_servers is not None:
            return self.mcp_servers
        default = default_servers_file()
        return default if default.exists() else None

    @property
    def has_key(self) -> bool:
        return self.api_key is not None

    def roots(self) -> list[Path]:
        """``KEY4U_FILE_ROOTS`` as folders (empty: the default, home and the current directory)."""
        return [Path(p) for p in (self.file_roots or "").split(os.pathsep) if p.strip()]

    def secrets(self) -> list[str]:
        """Values that must never be printed or logged."""
        found = [s.get_secret_value() for s in (self.api_key, self.mcp_token) if s is not None]
        if self.db_url is not None and (password := url_password(self.db_url.get_secret_value())):
            found.append(password)
        return found


def default_servers_file() -> Path:
    """Where the downstream MCP servers file is looked for when KEY4U_MCP_SERVERS is not set."""
    return Path(platformdirs.user_config_dir("key4u-mcp", appauthor=False)) / "servers.json"


def load_settings(env_file: Path | None = None, **overrides: object) -> Settings:
    """Build the settings; ``overrides`` (from the CLI) win over every other source.

    A value comes from the first source that has it: ``overrides`` by field name, then the
    environment, then ``env_file`` (default: ``.env`` in the working directory, when there is one).
    Within one source a field's variables count in their order (``KEY4U_*`` before ``OPENAI_*``).
    A bad value raises ``ValidationError`` located at the variable it came from.
    """
    dotenv = env_file if env_file is not None else Path(".env")
    environment = {k.upper(): v for k, v in os.environ.items() if k.upper().startswith(PREFIXES)}
    sources = [environment, _dotenv_values(dotenv)]
    values: dict[str, Any] = {}
    for field, info in Settings.model_fields.items():
        if overrides.get(field) is not None:
            values[field] = overrides[field]
            continue
        names = [n for n in _variables(info.validation_alias) if n != field]
        for source in sources:
            if found := next(((n, source[n]) for n in names if n in source), None):
                values[found[0]] = found[1]
                break
    return Settings.model_validate(values)


def _variables(alias: object) -> list[str]:
    return [c for c in alias.choices if isinstance(c, str)] if isinstance(alias, AliasChoices) else []


def _dotenv_values(path: Path) -> dict[str, str]:
    """The file's ``NAME=value`` lines (python-dotenv: quoting, ``export``, comments), names upper-cased.

    The working directory is the host's choice (often the user's project), so its ``.env`` may belong to
    another program: bytes that are not UTF-8 are replaced, and a file that cannot be read is skipped
    with a warning, rather than stopping the server."""
    try:
        if not path.is_file():
            return {}
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        logger.warning("ignoring %s: %s", path, exc.strerror or exc)
        return {}
    from dotenv import dotenv_values  # only where there is a file to read

    return {k.upper(): v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}
