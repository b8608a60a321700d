from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.standin import StandIn
from tests.pg import PostgresServer, binaries, start_server

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for this test session, started here (skipped where none is installed)."""
    if binaries() is None:
        pytest.skip("PostgreSQL's server is not installed (apt-get install postgresql); .ci/run installs it")
    pytest.importorskip("psycopg", reason="the [postgres] extra is not installed")
    # Not under pytest's own temporary directory (mode 0700): under root the server runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="key4u-pg-"))
    server = start_server(root)
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database("t_" + secrets.token_hex(6))
