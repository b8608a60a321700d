from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.standin import StandIn

#: A key no test should ever see echoed: tests search output for it.
FAKE_KEY = "sk-test-NEVER-SHOW-0123456789abcdef"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test reads the developer's keys, gateway, .env file, servers file or database."""
    for name in list(os.environ):
        if name.startswith(("KEY4U_", "OPENAI_")):
            monkeypatch.delenv(name)
    # Nor the user's own servers file or conversation database.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A fresh offline stand-in of /v1/responses on a free loopback port."""
    with StandIn() as upstream:
        yield upstream
