"""The ``key4u_respond`` tool and the conversation transcript resource, as the MCP host sees them.

The tool's parameters are ``RespondRequest``'s fields: its signature is derived from the model,
so the schema and the validation cannot drift apart, and the handler hands the bridge one
validated request. Rendering the result (readable text first, structured content beside it)
lives here too. Nothing here runs a conversation.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Protocol

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from server.bridge.conversation import Conversation
from server.bridge.request import RespondRequest, RespondResult
from server.bridge.service import Bridge
from server.upstream.translation import cap

TOOL_NAME = "key4u_respond"
DESCRIPTION = (
    "Send a prompt to a model behind the Key4U gateway (GPT, Claude, Gemini, DeepSeek, ...; any "
    "OpenAI-compatible gateway), "
    "letting that model call this server's local tools in parallel and functions you define. Returns the "
    "model's final answer with a trace of every tool call and the token usage. If the model calls one of "
    "your `functions`, the result has status 'requires_action' and `pending_calls`: run them and call again "
    "with `conversation_id` and `function_outputs`. Long tasks return status 'in_progress': call again with "
    "just the `conversation_id` to wait for the result."
)


class HasBridge(Protocol):
    """The lifespan state this module needs."""

    @property
    def bridge(self) -> Bridge: ...


def _request_signature() -> inspect.Signature:
    """``ctx`` and one keyword parameter per ``RespondRequest`` field, with its constraints and description."""
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Context[Any])]
    for name, info in RespondRequest.model_fields.items():
        annotation = Annotated[(info.annotation, *info.metadata, Field(description=info.description))]  # type: ignore[valid-type]
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info.default, annotation=annotation)
        )
    return inspect.Signature(params, return_annotation=Annotated[CallToolResult, RespondResult])


def _handler(max_result_chars: int) -> Callable[..., Coroutine[Any, Any, CallToolResult]]:
    async def key4u_respond(ctx: Context[Any], **arguments: Any) -> CallToolResult:
        state: HasBridge = ctx.request_context.lifespan_context
        request = RespondRequest.model_validate(arguments)
        step = 0

        async def progress(message: str) -> None:
            nonlocal step
            step += 1
            await ctx.report_progress(step, None, message)

        result = await state.bridge.respond(request, progress)
        return to_call_result(result, max_result_chars)

    key4u_respond.__signature__ = _request_signature()  # type: ignore[attr-defined]
    return key4u_respond


def register_respond(server: MCPServer[Any], max_result_chars: int) -> None:
    server.add_tool(
        _handler(max_result_chars),
        name=TOOL_NAME,
        title="Ask a Key4U model (with tools)",
        description=DESCRIPTION,
        annotations=ToolAnnotations(
            title="Ask a Key4U model",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        ),
    )

    @server.resource(
        "key4u://conversations/{conversation_id}",
        name="conversation",
        description="The full transcript of a key4u_respond conversation: every item sent and received.",
        mime_type="application/json",
    )
    async def conversation_transcript(conversation_id: str, ctx: Context[Any]) -> str:
        state: HasBridge = ctx.request_context.lifespan_context
        stored = await state.bridge.store.get(conversation_id)
        if stored is None:
            raise ResourceError(f"unknown conversation {conversation_id}")
        return transcript(stored.conversation)


def render(result: RespondResult, limit: int) -> str:
    """The text content: the answer first, then a short account."""
    lines: list[str] = []
    if result.text:
        lines.append(result.text)
    elif result.status == "requires_action":
        lines.append(
            "The model asked for these function calls; run them and call key4u_respond again with "
            f"conversation_id={result.conversation_id!r} and function_outputs:"
        )
    lines += [f"- {p.call_id}: {p.name}({json.dumps(p.arguments, ensure_ascii=False)})" for p in result.pending_calls]
    if result.error:
        lines.append(f"Error: {result.error}")
    lines += [f"Note: {n}" for n in result.notes]
    body = "\n".join(lines)
    if len(body) > limit:
        body = body[:limit] + f"\n[... truncated; the full transcript is the resource {result.transcript}]"
    summary = _summary(result)
    return f"{body}\n\n{summary}" if body else summary


def _summary(result: RespondResult) -> str:
    calls = result.tool_calls
    return (
        f"[{result.status} · model {result.model or 'unknown'} · {result.turns} turn(s) · "
        f"{len(calls)} tool call(s), {sum(not c.ok for c in calls)} failed · tokens in "
        f"{result.usage.input_tokens} / out {result.usage.output_tokens} · {result.conversation_id}]"
    )


def to_call_result(result: RespondResult, limit: int) -> CallToolResult:
    structured = result.model_dump(mode="json")
    structured["text"] = cap(structured["text"], limit)
    return CallToolResult(
        content=[TextContent(type="text", text=render(result, limit))],
        structured_content=structured,
        is_error=result.status == "failed",
    )


def transcript(conv: Conversation) -> str:
    """The full conversation as JSON: every item sent and received, and the trace."""
    document = {
        "conversation_id": conv.id,
        "status": conv.status,
        "model": conv.model,
        "options": conv.options.model_dump(mode="json"),
        "api": conv.api,
        "items": [i.model_dump(mode="json") for i in conv.items],
        "tool_calls": [t.model_dump() for t in conv.tool_calls],
        "usage": conv.usage.model_dump(),
        "created_at": conv.created_at,
        "updated_at": conv.updated_at,
    }
    return json.dumps(document, ensure_ascii=False, indent=1)
