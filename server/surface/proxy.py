"""Proxy mode: downstream servers' tools offered to this server's own MCP client too.

A server middleware (the SDK's public hook around every request) adds the downstream toolsets'
tools to ``tools/list`` under their ``<server>__<tool>`` names and routes ``tools/call`` for them to
the server that listed them. The same policy applies: ``hidden`` tools are not shown; ``run`` and
``return`` tools are, since here the client itself is the one who calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.types import ListToolsResult, Tool

from server.toolsets.base import CombinedToolset


class HasDownstream(Protocol):
    """A lifespan state that offers the downstream servers' toolsets (``AppState`` does)."""

    @property
    def downstream(self) -> CombinedToolset: ...


class ProxyMiddleware:
    """Adds the downstream tools to ``tools/list`` and routes ``tools/call`` for them to their server.

    Every other request, and a call to any other tool, goes on to the SDK unchanged.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        state: HasDownstream | None = getattr(ctx, "lifespan_context", None)
        if ctx.method not in ("tools/list", "tools/call") or state is None:
            return await call_next(ctx)
        offered = state.downstream.by_name()
        if ctx.method == "tools/call":
            called = _called(ctx.params)
            tool = offered.get(called[0]) if called is not None else None
            if called is None or tool is None:
                return await call_next(ctx)
            return await tool.call(called[1], self.timeout)
        result = await call_next(ctx)
        listing = result if isinstance(result, ListToolsResult) else ListToolsResult.model_validate(result)
        extra = [
            t.listing.model_copy(update={"name": t.name})
            if t.listing is not None
            else Tool(name=t.name, description=t.description, input_schema=t.input_schema)
            for t in offered.values()
        ]
        return listing.model_copy(update={"tools": [*listing.tools, *extra]})


def _called(params: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """The tool name and arguments of raw ``tools/call`` params, or None when they are not well formed
    (the SDK's own validation then answers the client)."""
    if params is None:
        return None
    name: object = params.get("name")
    arguments: object = params.get("arguments") or {}
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return name, cast("dict[str, Any]", arguments)
