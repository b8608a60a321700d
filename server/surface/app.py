"""Builds the MCP server: its lifespan and its tools. Logic lives in the modules it imports."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from server import __version__
from server.bridge.service import (
    DESCRIPTION,
    TOOL_NAME,
    Bridge,
    Effort,
    FunctionDefinition,
    FunctionOutput,
    LocalTool,
    LocalToolRunner,
    RespondResult,
    to_call_result,
    transcript,
)
from server.config import Settings
from server.store.sqlite import ConversationStore
from server.surface.local_tools import register_local_tools
from server.toolsets.policy import Policy

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "key4u-mcp hosts local tools (current_time, system_info, math_calculator, random_generator) that answer at "
    "once, with no network, and key4u_respond, which hands a prompt to a model behind the Key4U gateway "
    "(OpenAI-compatible /v1/responses) and lets that model call these tools in parallel and functions you define."
)


@dataclass
class AppState:
    bridge: Bridge


class SharedUpstream:
    """The process's one ``httpx.AsyncClient`` and ``ResponsesClient``, made on first use.

    Building the client loads the TLS trust store (tens of milliseconds), and hosts start every
    configured server at launch, so it is not done before the server can answer ``initialize``.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._http: Any = None
        self._client: Any = None

    def get(self) -> Any:
        if self._client is None:
            import httpx

            from server.upstream.responses import ResponsesClient, RetryPolicy

            s = self._settings
            assert s.api_key is not None
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(s.timeout, connect=10.0, write=30.0, pool=10.0),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            )
            self._client = ResponsesClient(
                self._http,
                base_url=s.base_url,
                api_key=s.api_key.get_secret_value(),
                stream=s.stream,
                retry=RetryPolicy(max_retries=s.max_retries, max_wait=s.retry_max_wait, budget=s.retry_budget),
            )
        return self._client

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _lifespan(settings: Settings) -> Any:
    @asynccontextmanager
    async def lifespan(server: MCPServer[AppState]) -> AsyncIterator[AppState]:
        upstream = SharedUpstream(settings) if settings.api_key is not None else None
        store = ConversationStore(
            settings.database, max_conversations=settings.max_conversations, max_age_days=settings.max_age_days
        )
        tools = [LocalTool(t.name, t.description, t.input_schema) for t in await server.list_tools()]
        hub = None
        local_policy = Policy()
        if settings.servers_file is not None:  # imported only when there are servers to run
            from server.toolsets.hub import Hub, load_hub_config

            hub_config, _ = load_hub_config(settings.servers_file)
            hub = Hub(hub_config) if hub_config.servers else None
            local_policy = hub_config.local_tools
        try:
            async with anyio.create_task_group() as tg:
                if hub is not None:
                    hub.start(tg)
                bridge = Bridge(
                    settings,
                    upstream.get if upstream else None,
                    store,
                    tools,
                    LocalToolRunner(server.call_tool),
                    tg,
                    hub=hub,
                    local_policy=local_policy,
                )
                yield AppState(bridge=bridge)
                await bridge.aclose()
                tg.cancel_scope.cancel()
        finally:
            store.close()
            if upstream is not None:
                with anyio.CancelScope(shield=True):
                    await upstream.aclose()

    return lifespan


def _register_respond(server: MCPServer[AppState], settings: Settings) -> None:
    async def key4u_respond(
        ctx: Context[AppState],
        prompt: Annotated[
            str | None, Field(description="The user message. Required unless conversation_id is given.")
        ] = None,
        instructions: Annotated[str | None, Field(description="System/developer instructions for the model.")] = None,
        model: Annotated[
            str | None, Field(description="Model name at the gateway (default: the KEY4U_MODEL setting).")
        ] = None,
        tools: Annotated[
            list[str] | None,
            Field(
                description="Names of this server's tools the model may call (default: all local tools; [] for none)."
            ),
        ] = None,
        functions: Annotated[
            list[FunctionDefinition] | None,
            Field(
                description="Your own tool definitions "
                "(name, description, inputSchema). The model may call them; they come back to you "
                "as pending_calls."
            ),
        ] = None,
        function_outputs: Annotated[
            list[FunctionOutput] | None,
            Field(
                description="Results of pending_calls "
                "(call_id, output), sent with the conversation_id that asked for them."
            ),
        ] = None,
        conversation_id: Annotated[
            str | None, Field(description="Continue (or wait for) an earlier conversation.")
        ] = None,
        reasoning_effort: Annotated[Effort | None, Field(description="Reasoning effort for reasoning models.")] = None,
        web_search: Annotated[
            bool, Field(description="Let the model use the gateway's built-in web_search tool.")
        ] = False,
        response_format: Annotated[
            dict[str, Any] | None,
            Field(description="A JSON Schema the answer must follow; the parsed object is returned in `parsed`."),
        ] = None,
        tool_choice: Annotated[str, Field(description="auto, none, required, or the name of one tool.")] = "auto",
        parallel_tool_calls: Annotated[bool, Field(description="Allow several tool calls per turn.")] = True,
        max_turns: Annotated[int, Field(ge=1, le=64, description="Most model turns before stopping.")] = 8,
        max_output_tokens: Annotated[int | None, Field(ge=16, description="Cap on output tokens per turn.")] = None,
        metadata: Annotated[
            dict[str, str] | None,
            Field(description='String pairs passed through to the gateway (e.g. {"model_id": "32"}).', max_length=16),
        ] = None,
    ) -> Annotated[CallToolResult, RespondResult]:
        bridge = ctx.request_context.lifespan_context.bridge
        args = {
            "prompt": prompt,
            "instructions": instructions,
            "model": model,
            "tools": tools,
            "functions": functions,
            "function_outputs": function_outputs,
            "conversation_id": conversation_id,
            "reasoning_effort": reasoning_effort,
            "web_search": web_search or None,
            "response_format": response_format,
            "tool_choice": tool_choice,
            "parallel_tool_calls": parallel_tool_calls,
            "max_turns": max_turns,
            "max_output_tokens": max_output_tokens,
            "metadata": metadata,
        }
        step = 0

        async def progress(message: str) -> None:
            nonlocal step
            step += 1
            await ctx.report_progress(step, None, message)

        result = await bridge.respond(args, progress)
        return to_call_result(result, settings.max_result_chars)

    server.add_tool(
        key4u_respond,
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
    def conversation_transcript(conversation_id: str, ctx: Context[AppState]) -> str:
        conv = ctx.request_context.lifespan_context.bridge.store.get(conversation_id)
        if conv is None:
            raise ResourceError(f"unknown conversation {conversation_id}")
        return transcript(conv)


def build_server(settings: Settings) -> MCPServer[AppState]:
    middleware: list[Any] = []
    if settings.proxy:
        from server.surface.proxy import ProxyMiddleware

        middleware.append(ProxyMiddleware(settings.tool_timeout))
    server: MCPServer[AppState] = MCPServer(
        "key4u-mcp",
        title="Key4U MCP bridge",
        version=__version__,
        instructions=INSTRUCTIONS,
        website_url="https://api.key4u.shop",
        log_level=settings.log_level,
        lifespan=_lifespan(settings),
        middleware=middleware,
    )
    register_local_tools(server)
    _register_respond(server, settings)
    return server
