"""Proxy mode: downstream servers' tools offered to this server's own MCP client too.

A server middleware (the SDK's public hook around every request) adds the hub's tools to
``tools/list`` under their ``<server>__<tool>`` names and answers ``tools/call`` for them from
the hub. The same policy applies: ``hidden`` tools are not shown; ``run`` and ``return`` tools
are, since here the client itself is the one who calls them.
"""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult, ListToolsResult, TextContent

from server.toolsets.policy import SEPARATOR


class ProxyMiddleware:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        method = getattr(ctx, "method", None)
        if method not in ("tools/list", "tools/call"):
            return await call_next(ctx)
        state = getattr(ctx, "lifespan_context", None)
        hub = getattr(getattr(state, "bridge", None), "hub", None)
        if hub is None:
            return await call_next(ctx)
        if method == "tools/call":
            params = ctx.params or {}
            name = params.get("name", "") if isinstance(params, dict) else getattr(params, "name", "")
            if SEPARATOR in name and name.partition(SEPARATOR)[0] in hub.servers:
                if name not in {t.qualified for t in hub.tools()}:
                    return CallToolResult(
                        content=[TextContent(type="text", text=f"Unknown tool: {name}")], is_error=True
                    )
                arguments = params.get("arguments") if isinstance(params, dict) else getattr(params, "arguments", None)
                return await hub.call(name, arguments or {}, self.timeout)
            return await call_next(ctx)
        result = await call_next(ctx)
        listing = result if isinstance(result, ListToolsResult) else ListToolsResult.model_validate(result)
        extra = [t.tool.model_copy(update={"name": t.qualified}) for t in hub.tools()]
        return listing.model_copy(update={"tools": [*listing.tools, *extra]})
