"""The ``key4u_respond`` tool and the conversation transcript resource, as the MCP host sees them.

The tool's parameters are ``RespondRequest``'s fields: its signature is derived from the model,
so the schema and the validation cannot drift apart, and the handler hands the bridge one
validated request. Rendering the result (readable text first, structured content beside it)
lives here too. Nothing here runs a conversation.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import CallToolResult, ResourceLink, TextContent, ToolAnnotations
from pydantic import Field
from pydantic_core import to_jsonable_python

from server.bridge.conversation import Conversation
from server.bridge.request import RespondRequest, RespondResult
from server.config import Settings
from server.errors import StoreError
from server.surface.approval import HostApprover
from server.surface.budget import Host, client_name, fit, fit_group
from server.upstream.jsonvalues import is_writable
from server.upstream.model import Item, Message

if TYPE_CHECKING:  # imported on the first call that needs the bridge (see ``surface.app.AppState``)
    from server.bridge.service import Bridge
    from server.store.base import ConversationStore

logger = logging.getLogger(__name__)

TOOL_NAME = "key4u_respond"
DESCRIPTION = (
    "Ask a model behind the Key4U gateway (GPT, Claude, Gemini, ...), or several at once; it may call this "
    "server's tools and your functions in parallel. The result says what to do next."
)


class HasBridge(Protocol):
    """The lifespan state this module needs (``AppState``)."""

    @property
    def bridge(self) -> Bridge: ...

    @property
    def store(self) -> ConversationStore: ...


def _request_signature() -> inspect.Signature:
    """``ctx`` and one keyword parameter per ``RespondRequest`` field, with its constraints and description."""
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Context[Any])]
    for name, info in RespondRequest.model_fields.items():
        annotation = Annotated[(info.annotation, *info.metadata, Field(description=info.description))]  # type: ignore[valid-type]
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info.default, annotation=annotation)
        )
    # No output schema: hosts read structuredContent as it is, and a schema would be ~3,000 characters of
    # every request's context (RespondResult documents the shape).
    return inspect.Signature(params, return_annotation=CallToolResult)


def _handler(settings: Settings) -> Callable[..., Coroutine[Any, Any, CallToolResult]]:
    async def key4u_respond(ctx: Context[Any], **arguments: Any) -> CallToolResult:
        state: HasBridge = ctx.request_context.lifespan_context
        # The SDK hands over its own validated objects (function definitions and outputs as models). Almost
        # always they hold no lone surrogate, and are taken as they are; else back to plain JSON first, so
        # RespondRequest's validation sees, and makes writable, every string in them.
        if is_writable(arguments):
            request = RespondRequest.model_validate(arguments, context={"writable": True})
        else:
            request = RespondRequest.model_validate(to_jsonable_python(arguments, by_alias=True))
        host = Host.of(client_name(ctx))
        logger.debug("key4u_respond for %s (client %r): budget %d", host.name, client_name(ctx), host.budget)
        step = 0

        async def progress(message: str) -> None:
            nonlocal step
            step += 1
            await ctx.report_progress(step, None, message)

        # A host known to wait longer than the default gets a longer deadline, unless one was set.
        deadline = host.deadline if host.deadline and "deadline" not in settings.model_fields_set else None
        # In the host's trace: the SDK's tools/call span, or the traceparent in the request's _meta.
        meta = ctx.request_context.meta
        with state.bridge.telemetry.respond_span(meta, request.conversation_id, request.model) as span:
            approver = HostApprover(ctx, host, settings.approval_timeout)
            result = await state.bridge.respond(request, progress, deadline=deadline, approver=approver)
            span.record(result)
        if request.offset:
            result = _from_offset(result, request.offset)
        return to_call_result(result, host, settings.max_result_chars)

    key4u_respond.__signature__ = _request_signature()  # type: ignore[attr-defined]
    return key4u_respond


def _from_offset(result: RespondResult, offset: int) -> RespondResult:
    rest = result.text[offset:]
    note = f"the answer from character {offset} of {len(result.text)}"
    return result.model_copy(update={"text": rest, "notes": [*result.notes, note]})


def register_respond(server: MCPServer[Any], settings: Settings) -> None:
    server.add_tool(
        _handler(settings),
        name=TOOL_NAME,
        title="Ask a Key4U model (with tools)",
        description=DESCRIPTION,
        # Claude Code reads the size it keeps inline from the tool's definition (2.1.197), not the result.
        meta={"anthropic/maxResultSizeChars": settings.max_result_chars or Host.of("claude-code").budget},
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
        try:
            stored = await state.store.get(conversation_id)
        except StoreError as exc:  # a reason, not the SDK's bare "Error creating resource from template"
            raise ResourceError(f"conversation {conversation_id} could not be read: {exc}") from exc
        if stored is None:
            raise ResourceError(f"unknown conversation {conversation_id}")
        return transcript(stored.conversation)


def render(result: RespondResult) -> str:
    """The text content: the answer first, then what to do next and a short account."""
    if result.answers is not None:
        return _render_group(result)
    lines: list[str] = []
    if result.text:
        lines.append(result.text)
    elif result.status == "requires_action":
        lines.append("The model asked for these function calls:")
    lines += [f"- {p.call_id}: {p.name}({json.dumps(p.arguments, ensure_ascii=False)})" for p in result.pending_calls]
    lines += _what_next(result)
    body = "\n".join(lines)
    summary = _summary(result)
    return f"{body}\n\n{summary}" if body else summary


def _render_group(result: RespondResult) -> str:
    """A group: the synthesis, then each model's answer under its name, then the group's account."""
    blocks: list[str] = []
    if result.text:
        blocks.append(f"Synthesis by {result.model or 'the synthesis model'}:\n{result.text}")
    for answer in result.answers or []:
        took = f" · {answer.seconds:.1f} s" if answer.seconds is not None else ""
        blocks.append(f"## {answer.asked}{took}\n{render(answer)}")
    if tail := _what_next(result):
        blocks.append("\n".join(tail))
    usage = result.usage
    took = f" · {result.seconds:.1f} s" if result.seconds is not None else ""
    blocks.append(
        f"[group {result.status} · {len(result.answers or [])} models{took} · tokens in {usage.input_tokens} / "
        f"out {usage.output_tokens}{_cost(result)} · {result.conversation_id}]"
    )
    return "\n\n".join(blocks)


def _what_next(result: RespondResult) -> list[str]:
    """The error, what to do next, and the notes, one line each."""
    lines = [f"Error: {result.error}"] if result.error else []
    if result.next:
        lines.append(f"Next: {result.next}")
    return lines + [f"Note: {n}" for n in result.notes]


def _summary(result: RespondResult) -> str:
    calls = result.tool_calls
    return (
        f"[{result.status} · model {result.model or 'unknown'} · {result.turns} turn(s) · "
        f"{len(calls)} tool call(s), {sum(not c.ok for c in calls)} failed · tokens in "
        f"{result.usage.input_tokens} / out {result.usage.output_tokens}{_cost(result)} · {result.conversation_id}]"
    )


def _cost(result: RespondResult) -> str:
    cost = result.usage.cost_usd
    return f" · ${cost:.4f}" if cost is not None else " · cost unknown"


def to_call_result(result: RespondResult, host: Host, max_chars: int | None = None) -> CallToolResult:
    """The result within what ``host`` passes on whole (``max_chars`` overrides its budget), with a link
    to the full transcript."""
    budget = max_chars or host.budget
    fitted = (fit_group if result.answers is not None else fit)(result, budget, render, host.reads)
    link = ResourceLink(
        type="resource_link",
        uri=result.transcript,
        name=f"conversation {result.conversation_id}",
        description="The full transcript: every message, call and output.",
        mime_type="application/json",
    )
    return CallToolResult(
        content=[TextContent(type="text", text=render(fitted)), link],
        structured_content=fitted.model_dump(mode="json"),
        is_error=result.status == "failed",
    )


def _readable(item: Item) -> dict[str, Any]:
    """An item as the transcript shows it: images' and documents' bytes left out (their size is kept)."""
    if not isinstance(item, Message) or not item.attachments:
        return item.model_dump(mode="json")
    shown = [a.model_copy(update={"data": None}) if a.data is not None else a for a in item.attachments]
    return item.model_copy(update={"attachments": shown}).model_dump(mode="json")


def transcript(conv: Conversation) -> str:
    """The full conversation as JSON: every item sent and received, and the trace."""
    document = {
        "conversation_id": conv.id,
        "status": conv.status,
        "model": conv.model,
        "options": conv.options.model_dump(mode="json"),
        "api": conv.api,
        "items": [_readable(i) for i in conv.items],
        "tool_calls": [t.model_dump() for t in conv.tool_calls],
        "approvals": [a.model_dump() for a in conv.approvals],
        "usage": conv.usage.model_dump(),
        "created_at": conv.created_at,
        "updated_at": conv.updated_at,
    }
    if conv.group is not None:  # a group: its models' conversations are resources of their own
        document["group"] = conv.group.model_dump(mode="json")
    return json.dumps(document, ensure_ascii=False, indent=1)
