"""This server's own tools (``tools/``) as a toolset, called with the same validation as a client's call.

It never decides policy; ``PolicyToolset`` does, with ``run`` as the default mode.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, Tool

from server.toolsets.base import OfferedTool

CallTool = Callable[[str, dict[str, Any]], Awaitable[Any]]


class LocalToolset:
    """``tools`` as listed by this server, run through ``call`` (the server's ``call_tool``)."""

    def __init__(self, tools: Sequence[Tool], call: CallTool) -> None:
        self._call = call
        self._tools = [OfferedTool.from_listing(t, self) for t in tools]

    def tools(self) -> list[OfferedTool]:
        return self._tools

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
        try:
            result = await self._call(name, arguments)
        except ToolError as exc:
            return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        if not isinstance(result, CallToolResult):
            return CallToolResult(content=[TextContent(type="text", text=json.dumps(result, default=str))])
        return result

    def problem(self) -> str | None:
        return None

    def might_offer(self, name: str) -> bool:
        return any(t.name == name for t in self._tools)
