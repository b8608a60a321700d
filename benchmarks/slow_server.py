"""A downstream MCP server whose tools each take 200 ms (for the parallelism benchmark)."""

from __future__ import annotations

import anyio
from mcp.server import MCPServer
from mcp.types import ToolAnnotations

server: MCPServer = MCPServer("slow")


def _make(index: int) -> None:
    async def slow() -> str:
        await anyio.sleep(0.2)
        return f"slow {index} done"

    server.add_tool(
        slow, name=f"slow_{index}", description="Takes 200 ms.", annotations=ToolAnnotations(read_only_hint=True)
    )


for i in range(16):
    _make(i)

if __name__ == "__main__":
    server.run()
