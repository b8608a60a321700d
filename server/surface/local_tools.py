"""Publishes the plain functions of ``tools`` as MCP tools.

Each function keeps its own signature (so its schema and its validation are the same
object); the wrapper only turns a ``ToolInputError`` into an MCP tool error and returns
the result both as readable text and as structured content.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, TextContent, ToolAnnotations
from pydantic import BaseModel

from tools import LOCAL_TOOLS, LocalTool, ToolInputError


def to_call_result(result: BaseModel) -> CallToolResult:
    """The result as readable text (its ``summary()`` when it has one) and as structured content."""
    content: list[ContentBlock] = [TextContent(type="text", text=_text(result))]
    return CallToolResult(content=content, structured_content=result.model_dump(mode="json"))


def _text(result: BaseModel) -> str:
    summary: object = getattr(result, "summary", None)
    text = summary() if callable(summary) else None
    return text if isinstance(text, str) else result.model_dump_json()


def _wrap(tool: LocalTool) -> Callable[..., Awaitable[CallToolResult]]:
    fn = tool.fn
    hints = typing.get_type_hints(fn, include_extras=True)
    output_model = hints["return"]
    signature = inspect.signature(fn)

    # Async, so the SDK runs it on the event loop: every local tool answers in well under a millisecond to
    # a few milliseconds, less than the hop to a worker thread costs.
    @functools.wraps(fn)
    async def run(**kwargs: Any) -> CallToolResult:
        try:
            result = fn(**kwargs)
        except ToolInputError as exc:
            raise ToolError(str(exc)) from exc
        return to_call_result(result)

    params = [p.replace(annotation=hints[p.name]) for p in signature.parameters.values()]
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=params, return_annotation=Annotated[CallToolResult, output_model]
    )
    return run


def annotations_for(tool: LocalTool) -> ToolAnnotations:
    """Read-only and closed-world. Left out, since every tool listing is context a host pays for: the
    title (the tool's own ``title`` comes first), and the hints the spec counts only for tools that are
    not read-only (``destructiveHint``; ``idempotentHint`` but where it is true)."""
    return ToolAnnotations(
        read_only_hint=True,
        idempotent_hint=True if tool.idempotent else None,
        open_world_hint=False,
    )


def register_local_tools(server: MCPServer[Any]) -> None:
    for tool in LOCAL_TOOLS:
        server.add_tool(
            _wrap(tool),
            name=tool.name,
            title=tool.title,
            description=tool.description,
            annotations=annotations_for(tool),
        )
