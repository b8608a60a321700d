"""Builds the MCP server: its lifespan and its tools. Logic lives in the modules it imports."""

from __future__ import annotations

from typing import Any

from mcp.server import MCPServer

from server import __version__
from server.config import Settings
from server.local_tools import register_local_tools

INSTRUCTIONS = (
    "key4u-mcp hosts local tools (current_time, system_info, math_calculator, random_generator) "
    "that answer at once, with no network."
)


def build_server(settings: Settings) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer(
        "key4u-mcp",
        title="Key4U MCP bridge",
        version=__version__,
        instructions=INSTRUCTIONS,
        website_url="https://api.key4u.shop",
        log_level=settings.log_level,
    )
    register_local_tools(server)
    return server
