"""A bare ``mcp`` server with one tool, started the same way as ours (the start-up baseline)."""

from __future__ import annotations

from mcp.server import MCPServer

server: MCPServer = MCPServer("bare")


@server.tool()
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


if __name__ == "__main__":
    server.run()
