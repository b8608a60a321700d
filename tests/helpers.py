"""Shared test helpers: settings, and ways to reach the server through real clients (in memory, a spawned
stdio process, raw JSON-RPC lines)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from server.config import Settings
from server.surface.app import build_server
from server.upstream.model import (
    ApiStyle,
    FunctionCall,
    Item,
    Message,
    ModelRequest,
    ModelResponse,
    OnEvent,
    StreamEvent,
    TokenUsage,
)
from tests.conftest import FAKE_KEY

LOCAL_TOOLS = {"current_time", "system_info", "math_calculator", "random_generator"}
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: A client's first message, for tests that speak raw JSON-RPC lines to a spawned server.
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


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


def script() -> str:
    """The installed ``key4u-mcp`` console script, as an MCP host runs it."""
    path = shutil.which("key4u-mcp", path=str(BIN)) or shutil.which("key4u-mcp")
    assert path, "the key4u-mcp console script is not installed next to this interpreter"
    return path


@asynccontextmanager
async def spawned(params: StdioServerParameters, errlog: Path) -> AsyncIterator[Client]:
    """A real MCP client connected to a spawned stdio server; the server's stderr goes to ``errlog``."""
    with errlog.open("w") as err:
        async with Client(stdio_client(params, errlog=err), mode="legacy") as client:
            yield client


def raw_session(*lines: dict[str, Any]) -> bytes:
    """JSON-RPC messages as the newline-delimited bytes a stdio server reads."""
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def stdio_exchange(
    session: bytes,
    env: Mapping[str, str],
    errlog: Path,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 30,
) -> list[dict[str, Any]]:
    """What a host without an SDK sees: the installed command is started, ``session`` written to its stdin,
    and the lines it writes read as JSON-RPC messages until ``until(messages)`` holds. Then stdin closes
    (the host going away), the server must exit 0, and what it writes on the way out is read too. Its
    stderr goes to ``errlog``."""
    messages: list[dict[str, Any]] = []
    with errlog.open("wb") as err:
        async with await anyio.open_process(
            [script()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=dict(env)
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            await proc.stdin.send(session)
            pending = b""
            with anyio.fail_after(timeout):
                while not until(messages):
                    pending += await proc.stdout.receive()
                    *lines, pending = pending.split(b"\n")
                    messages.extend(json.loads(line) for line in lines if line.strip())
                await proc.stdin.aclose()
                assert await proc.wait() == 0
                async for chunk in proc.stdout:
                    pending += chunk
    messages.extend(json.loads(line) for line in pending.split(b"\n") if line.strip())
    return messages


class ScriptedModel:
    """A ``Model`` that answers from a script, one entry per turn: a list of ``(name, arguments)`` calls,
    or the final text. It records each request, so tests assert on what the loop sent."""

    def __init__(self, *turns: list[tuple[str, dict[str, Any]]] | str, api: ApiStyle = "responses") -> None:
        self.turns = list(turns)
        self.api: ApiStyle = api
        self.requests: list[ModelRequest] = []

    async def respond(self, request: ModelRequest, on_event: OnEvent | None = None) -> ModelResponse:
        self.requests.append(request)
        step = self.turns.pop(0) if self.turns else "done"
        usage = TokenUsage(input_tokens=10, output_tokens=5)
        if isinstance(step, str):
            return ModelResponse(api=self.api, output=[Message(role="assistant", text=step)], usage=usage)
        calls: list[Item] = [
            FunctionCall(call_id=f"call_{len(self.requests)}_{n}", name=name, arguments=json.dumps(arguments))
            for n, (name, arguments) in enumerate(step)
        ]
        if on_event is not None:
            for call in calls:
                assert isinstance(call, FunctionCall)
                await on_event(StreamEvent("function_call", call.name))
        return ModelResponse(api=self.api, output=calls, usage=usage)
