"""A downstream MCP server with ``BENCH_TOOLS`` tools (default 1,000), for the many-tools benchmark.

Each tool has the schema of the benchmark's caller functions (a key, a limit, a list of fields); the
model is never asked to call them.

    BENCH_TOOLS=100 python -m benchmarks.many_tools_server
"""

from __future__ import annotations

import os

from mcp.server import MCPServer
from mcp.types import ToolAnnotations

server: MCPServer = MCPServer("many", log_level="WARNING")


def _make(index: int) -> None:
    def lookup(key: str, limit: int = 10, fields: list[str] | None = None) -> str:
        return f"collection {index}: no rows for {key!r} (limit {limit}, fields {fields or 'all'})"

    server.add_tool(
        lookup,
        name=f"lookup_{index:04d}",
        description=f"Look up the records of collection {index} by key; returns the matching rows.",
        annotations=ToolAnnotations(read_only_hint=True),
    )


for i in range(int(os.environ.get("BENCH_TOOLS", "1000"))):
    _make(i)

if __name__ == "__main__":
    server.run()
