"""``key4u-mcp demo``: start the server as a real stdio subprocess and exercise it as a client would."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult

from server.config import Settings
from server.logs import mask

LOCAL_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("current_time", {}),
    ("system_info", {}),
    ("math_calculator", {"operation": "add", "a": 123.5, "b": 456.7}),
    ("random_generator", {"min": 1, "max": 100, "count": 3}),
]


class Printer:
    """Writes the demo's account to stdout with the key masked."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = secrets

    def __call__(self, text: str = "") -> None:
        print(mask(text, self._secrets), flush=True)


def server_parameters(env: dict[str, str] | None = None) -> StdioServerParameters:
    """The command an MCP host would run: this interpreter's ``key4u-mcp``."""
    merged = {k: v for k, v in os.environ.items() if k.startswith(("KEY4U_", "OPENAI_"))}
    merged.setdefault("KEY4U_LOG_LEVEL", "WARNING")
    merged.update(env or {})
    return StdioServerParameters(command=sys.executable, args=["-m", "server"], env=merged)


def _result_text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", f"[{block.type}]") for block in result.content)


async def run_demo(settings: Settings) -> int:
    out = Printer(settings.secrets())
    started = time.perf_counter()
    failures = 0
    out("key4u-mcp demo: starting the server as a stdio subprocess and connecting as an MCP client")
    async with Client(server_parameters(), mode="legacy") as client:
        tools = (await client.list_tools()).tools
        out(f"\n{len(tools)} tools:")
        for tool in tools:
            out(f"  - {tool.name}: {tool.description}")
        out("\nCalling each local tool:")
        for name, arguments in LOCAL_CALLS:
            t0 = time.perf_counter()
            result = await client.call_tool(name, arguments)
            ms = (time.perf_counter() - t0) * 1000
            status = "error" if result.is_error else "ok"
            failures += result.is_error
            out(f"\n  {name}({json.dumps(arguments)}) -> {status} in {ms:.1f} ms")
            for line in _result_text(result).splitlines():
                out(f"    {line}")
    out(f"\nDone in {time.perf_counter() - started:.2f} s; {failures} failure(s).")
    return 1 if failures else 0
