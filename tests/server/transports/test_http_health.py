"""``/healthz`` tells the truth: once the lifespan (and with it the SDK's task group) has died, the server
answers 503 and the process exits with status 1 for its supervisor to restart it."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import MCPError

import server.bridge.service as service_module
import server.surface.app as app_module
from server.transports.http import LIFESPAN_FAILED_EXIT
from tests.helpers import INITIALIZE, REPO, settings_for
from tests.server.transports import broken_lifespan
from tests.server.transports.serving import health_of, http_client, served

pytestmark = pytest.mark.anyio
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


async def wait_for_status(url: str, status: int, within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while True:
            try:
                if httpx.get(url, timeout=2).status_code == status:
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(0.05)


async def test_healthz_and_mcp_answer_503_once_the_lifespan_has_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service_module, "Bridge", service_module.Bridge)  # both restored after the test
    monkeypatch.setattr(app_module, "AppState", app_module.AppState)
    explode = threading.Event()
    broken_lifespan.install(explode.is_set)
    caplog.set_level(logging.ERROR)
    with served(settings_for("http://127.0.0.1:9/v1", tmp_path)) as server:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        async with http_client(f"{server.url}/mcp") as client:
            assert (await client.call_tool("current_time", {"timezone": "UTC"})).is_error is False
            explode.set()
            await wait_for_status(f"{server.url}/healthz", 503)
            with pytest.raises(MCPError):
                await client.call_tool("current_time", {"timezone": "UTC"})
        reply = httpx.post(f"{server.url}/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        assert reply.status_code == 503 and reply.json()["error"]["message"]
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "unavailable"}
        assert health_of(server).lifespan_failed
    assert f"lifespan ended while serving (RuntimeError: {broken_lifespan.MESSAGE})" in caplog.text


async def test_the_process_exits_with_status_1_when_the_lifespan_dies(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    trigger = tmp_path / "explode"
    env = {**os.environ, "PYTHONPATH": str(REPO), "KEY4U_DB_PATH": str(tmp_path / "db.sqlite3")}
    command = [sys.executable, "-m", "tests.server.transports.broken_lifespan", str(trigger)]
    errlog = tmp_path / "err.txt"
    with errlog.open("wb") as err:
        async with await anyio.open_process(
            [*command, "--transport", "http", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=err, env=env
        ) as proc:
            try:
                await wait_for_status(f"{url}/healthz", 200, within=30)
                async with http_client(f"{url}/mcp") as client:
                    assert (await client.call_tool("current_time", {"timezone": "UTC"})).is_error is False
                trigger.touch()
                with anyio.fail_after(20):
                    code = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
    stderr = errlog.read_text()
    assert code == LIFESPAN_FAILED_EXIT == 1, stderr
    assert "lifespan ended while serving" in stderr and broken_lifespan.MESSAGE in stderr
    assert f"exiting with status {LIFESPAN_FAILED_EXIT}" in stderr
