"""Proxy mode: downstream servers' tools offered to this server's own MCP client too.

A server middleware (the SDK's public hook around every request) adds the downstream toolsets'
tools to ``tools/list`` under their ``<server>__<tool>`` names and routes ``tools/call`` for them to
the server that listed them. The same policy applies: ``hidden`` tools are not shown; ``run`` and
``return`` tools are, since here the client itself is the one who calls them.
"""

from __future__ import annotations

from typing import Any, Protocol

from mcp.types import ListToolsResult, Tool

from server.toolsets.base import CombinedToolset


class HasDownstream(Protocol):
    @property
    def downstream(self) -> CombinedToolset: ...


class ProxyMiddleware:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        method = getattr(ctx, "method", None)
        state: HasDownstream | None = getattr(ctx, "lifespan_context", None)
        if method not in ("tools/list", "tools/call") or state is None:
            return await call_next(ctx)
        offered = state.downstream.by_name()
        if method == "tools/call":
            params = ctx.params or {}
            name = params.get("name", "") if isinstance(params, dict) else getattr(params, "name", "")
            tool = offered.get(name)
            if tool is None:
                return await call_next(ctx)
            arguments = params.get("arguments") if isinstance(params, dict) else getattr(params, "arguments", None)
            return await tool.call(arguments or {}, self.timeout)
        result = await call_next(ctx)
        listing = result if isinstance(result, ListToolsResult) else ListToolsResult.model_validate(result)
        extra = [
            t.listing.model_copy(update={"name": t.name})
            if t.listing is not None
            else Tool(name=t.name, description=t.description, input_schema=t.input_schema)
            for t in offered.values()
        ]
        return listing.model_copy(update={"tools": [*listing.tools, *extra]})
