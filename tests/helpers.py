"""Shared test helpers: the Key4U example and ways to reach the bridge through real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client

from server.config import Settings
from server.surface.app import build_server
from tests.conftest import FAKE_KEY

LOCAL_TOOLS = {"current_time", "system_info", "math_calculator", "random_generator"}


def settings_for(base_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_key": FAKE_KEY,
        "base_url": base_url,
        "db_path": tmp_path / "conversations.db",
        "max_retries": 2,
        "retry_max_wait": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def bridge_client(settings: Settings, mode: str = "legacy") -> AsyncIterator[Client]:
    async with Client(build_server(settings), mode=mode) as client:  # type: ignore[arg-type]
        yield client


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)
