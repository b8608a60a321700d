"""``key4u_respond``: arguments, result, and the bridge that runs conversations.

A conversation runs as a job in the server's task group, so that a call can return
``in_progress`` at the deadline while the work goes on; calling again with its
``conversation_id`` waits for it. A client's cancellation cancels the job it is waiting on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import TaskGroup
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from server.bridge.conversation import Conversation, Options, PendingCall, Status, ToolCallTrace, UsageTotals
from server.config import Settings
from server.logs import mask
from server.store.sqlite import ConversationStore
from server.toolsets.policy import SEPARATOR, Mode, Policy

if TYPE_CHECKING:
    # The loop machinery is imported where it is first used, not at start-up: hosts start
    # every configured server at launch, and this module is on the way to ``initialize``.
    from server.bridge.loop import LoopLimits, ToolRunner, Toolset, Upstream
    from server.toolsets.hub import Hub
    from server.upstream.translation import FunctionSpec

logger = logging.getLogger(__name__)

TOOL_NAME = "key4u_respond"
DESCRIPTION = (
    "Send a prompt to a model behind the Key4U gateway (any OpenAI-compatible /v1/responses endpoint), "
    "letting that model call this server's local tools in parallel and functions you define. Returns the "
    "model's final answer with a trace of every tool call and the token usage. If the model calls one of "
    "your `functions`, the result has status 'requires_action' and `pending_calls`: run them and call again "
    "with `conversation_id` and `function_outputs`. Long tasks return status 'in_progress': call again with "
    "just the `conversation_id` to wait for the result."
)
Effort = Literal["minimal", "low", "medium", "high"]
#: A conversation saved as running this long ago is taken to be abandoned by its process.
STALE_AFTER = 900.0


class FunctionDefinition(BaseModel):
    """A function the remote model may call; the caller runs it."""

    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(min_length=1, max_length=128)
    description: str = ""
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        validation_alias=AliasChoices("inputSchema", "input_schema", "parameters"),
        serialization_alias="inputSchema",
    )


class FunctionOutput(BaseModel):
    call_id: str = Field(min_length=1)
    output: Any = Field(description="The function's result: a string, or any JSON value (sent as JSON).")


class RespondResult(BaseModel):
    text: str = Field(description="The model's final answer (possibly shortened; see the transcript resource).")
    status: Status
    conversation_id: str
    model: str | None = Field(description="The model as the gateway reports it (gateways rename models).")
    turns: int
    tool_calls: list[ToolCallTrace]
    pending_calls: list[PendingCall]
    parsed: Any = Field(default=None, description="The parsed JSON answer, when response_format was given.")
    usage: UsageTotals
    error: str | None = None
    notes: list[str] = Field(default_factory=list)
    transcript: str = Field(description="URI of the full transcript resource.")


@dataclass
class Job:
    conversation: Conversation
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    listener: Callable[[str], Awaitable[None]] | None = None

    async def notify(self, message: str) -> None:
        if self.listener is not None:
            try:
                await self.listener(message)
            except Exception:  # a client that went away must not stop the work
                logger.debug("progress notification failed", exc_info=True)


class LocalToolRunner:
    """Runs this server's own tools, with the same validation as a client's call."""

    def __init__(self, call: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> None:
        self._call = call

    async def call(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        try:
            result = await self._call(name, arguments)
        except ToolError as exc:
            return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        if not isinstance(result, CallToolResult):
            return CallToolResult(content=[TextContent(type="text", text=json.dumps(result, default=str))])
        return result


@dataclass
class LocalTool:
    name: str
    description: str | None
    input_schema: dict[str, Any]


class Dispatcher:
    """Sends each call to this server's own tools or to the downstream server that owns it."""

    def __init__(self, local: ToolRunner, hub: Hub | None, timeout: float) -> None:
        self.local, self.hub, self.timeout = local, hub, timeout

    async def call(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        if self.hub is not None and name.partition(SEPARATOR)[0] in self.hub.servers:
            # A little under the loop's own timeout, so that the hub can mark a hung server first.
            return await self.hub.call(name, arguments, self.timeout * 0.95)
        return await self.local.call(name, arguments)


class Bridge:
    """Owns the conversations: starts, resumes and waits for them."""

    def __init__(
        self,
        settings: Settings,
        upstream: Callable[[], Upstream] | None,
        store: ConversationStore,
        local_tools: list[LocalTool],
        runner: ToolRunner,
        task_group: TaskGroup,
        hub: Hub | None = None,
        local_policy: Policy | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.store = store
        self.local_tools = {t.name: t for t in local_tools if t.name != TOOL_NAME}
        self.hub = hub
        self.local_policy = local_policy or Policy()
        self.runner = Dispatcher(runner, hub, settings.tool_timeout)
        self.task_group = task_group
        self.jobs: dict[str, Job] = {}
        self._specs: dict[tuple[str, str | None, str, str], FunctionSpec] = {}
        self._limits: LoopLimits | None = None

    # --- entry point ----------------------------------------------------------------------

    async def respond(self, args: dict[str, Any], progress: Callable[[str], Awaitable[None]] | None) -> RespondResult:
        if self.upstream is None:
            raise ToolError(
                "no API key is configured: set KEY4U_API_KEY (or OPENAI_API_KEY) in this server's environment; "
                "the local tools work without one"
            )
        if self.hub is not None:
            await self.hub.wait_ready(min(10.0, self.settings.deadline / 2))
        conversation_id = args.get("conversation_id")
        if conversation_id:
            job = await self._resume(conversation_id, args)
        else:
            if not args.get("prompt"):
                raise ToolError("prompt is required unless conversation_id is given")
            if args.get("function_outputs"):
                raise ToolError("function_outputs need the conversation_id of the conversation that asked for them")
            conv = self._new_conversation(args)
            job = self._start(conv, self._toolset(conv))
        return await self._wait(job, progress)

    # --- conversations --------------------------------------------------------------------

    def _new_conversation(self, args: dict[str, Any]) -> Conversation:
        options = Options(model=args.get("model") or self.settings.model, **self._option_args(args))
        conv = Conversation(options=options)
        conv.items.append({"type": "message", "role": "user", "content": args["prompt"]})
        return conv

    @staticmethod
    def _option_args(args: dict[str, Any]) -> dict[str, Any]:
        keys = (
            "instructions",
            "tools",
            "reasoning_effort",
            "web_search",
            "response_format",
            "tool_choice",
            "parallel_tool_calls",
            "max_turns",
            "max_output_tokens",
            "metadata",
        )
        result = {k: args[k] for k in keys if args.get(k) is not None}
        if args.get("functions") is not None:
            result["functions"] = [f.model_dump(by_alias=True) for f in args["functions"]]
        return result

    async def _resume(self, conversation_id: str, args: dict[str, Any]) -> Job:
        running = self.jobs.get(conversation_id)
        wants_more = args.get("prompt") or args.get("function_outputs")
        if running is not None:
            if wants_more:
                raise ToolError(
                    f"conversation {conversation_id} is still running; call key4u_respond with only its "
                    "conversation_id to wait for the result, then continue it"
                )
            return running
        conv = self.store.get(conversation_id)
        if conv is None:
            raise ToolError(f"unknown conversation_id {conversation_id!r}; it may have expired: start a new one")
        if conv.status == "in_progress" and time.time() - conv.updated_at > STALE_AFTER:
            conv.status = "incomplete"  # its process stopped mid-way: let it be continued
            conv.notes = [*conv.notes, "the process running this conversation stopped before it finished"]
        if conv.status == "in_progress":
            # Saved as running by another process sharing the database (or one that stopped mid-way).
            conv.notes = [
                *conv.notes,
                f"this conversation is running in another server process (last saved "
                f"{time.time() - conv.updated_at:.0f} s ago); call again with only its conversation_id",
            ]
            if wants_more:
                raise ToolError(conv.notes[-1])
            return self._finished_job(conv)
        if not wants_more:
            return self._finished_job(conv)  # nothing new: report where it stands
        updates = self._option_args(args)
        if args.get("model"):
            updates["model"] = args["model"]
        conv.options = conv.options.model_copy(update=updates)
        tools = self._toolset(conv)  # checked before anything is sent
        if conv.status == "requires_action":
            self._add_function_outputs(conv, args.get("function_outputs") or [])
        elif args.get("function_outputs"):
            raise ToolError(
                f"conversation {conversation_id} is not waiting for function outputs (status {conv.status})"
            )
        if args.get("prompt"):
            conv.items.append({"type": "message", "role": "user", "content": args["prompt"]})
        conv.notes, conv.error = [], None
        conv.options = conv.options.model_copy(update={"max_turns": conv.turns + conv.options.max_turns})
        return self._start(conv, tools)

    def _add_function_outputs(self, conv: Conversation, outputs: list[FunctionOutput]) -> None:
        pending = {p.call_id: p for p in conv.pending_calls}
        given = {o.call_id: o for o in outputs}
        unknown = sorted(set(given) - set(pending))
        if unknown:
            raise ToolError(f"no pending call has call_id {', '.join(unknown)}; pending: {', '.join(pending)}")
        missing = sorted(set(pending) - set(given))
        if missing:
            raise ToolError(f"function_outputs must answer every pending call; missing call_id {', '.join(missing)}")
        for call_id, call in pending.items():
            value = given[call_id].output
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            conv.items.append({"type": "function_call_output", "call_id": call_id, "output": text})
            conv.tool_calls.append(
                ToolCallTrace(
                    turn=conv.turns,
                    call_id=call_id,
                    name=call.name,
                    arguments=call.arguments,
                    ok=True,
                    ms=0.0,
                    started_ms=0.0,
                    output=text[:500],
                    ran_by="caller",
                )
            )
        conv.pending_calls = []

    def _available(self) -> dict[str, tuple[str | None, dict[str, Any], Mode]]:
        """Every tool the policy lets the model see: name -> (description, input schema, mode)."""
        available: dict[str, tuple[str | None, dict[str, Any], Mode]] = {}
        for name, tool in self.local_tools.items():
            mode = self.local_policy.mode_for(name, read_only=True, default="run")
            if mode != "hidden":
                available[name] = (tool.description, tool.input_schema, mode)
        if self.hub is not None:
            for hub_tool in self.hub.tools():
                available[hub_tool.qualified] = (hub_tool.tool.description, hub_tool.tool.input_schema, hub_tool.mode)
        return available

    @property
    def limits(self) -> LoopLimits:
        if self._limits is None:
            from server.bridge.loop import LoopLimits

            s = self.settings
            self._limits = LoopLimits(
                concurrency=s.tool_concurrency, call_timeout=s.tool_timeout, conversation_mode=s.conversation_mode
            )
        return self._limits

    def _spec(self, name: str, description: str | None, schema: dict[str, Any], api_name: str) -> FunctionSpec:
        """``to_function_tool``, remembered: the same tools are offered on every call."""
        from server.upstream.translation import to_function_tool

        key = (name, description, json.dumps(schema, sort_keys=True), api_name)
        spec = self._specs.get(key)
        if spec is None:
            if len(self._specs) > 1024:
                self._specs.clear()
            spec = self._specs[key] = to_function_tool(name, description, schema, api_name)
        return spec

    def _toolset(self, conv: Conversation) -> Toolset:
        from server.bridge.loop import Toolset
        from server.upstream.translation import NameMap, UnsupportedToolError

        opts = conv.options
        available = self._available()
        names = list(available) if opts.tools is None else opts.tools
        unknown = [n for n in names if n not in available]
        down = (
            [p for p in self.hub.problems() if any(f"'{n.partition(SEPARATOR)[0]}'" in p for n in unknown)]
            if self.hub
            else []
        )
        if down:
            raise ToolError(f"{'; '.join(down)}; it is retried with backoff, try again shortly")
        if unknown:
            raise ToolError(
                f"unknown tool(s) {', '.join(unknown)} in tools; the tools available are: {', '.join(available)}"
            )
        functions = [FunctionDefinition.model_validate(f) for f in opts.functions]
        clash = [f.name for f in functions if f.name in names]
        if clash:
            raise ToolError(
                f"function name(s) {', '.join(clash)} clash with this server's tools; rename them, or leave those "
                "tools out with the tools argument"
            )
        if len({f.name for f in functions}) != len(functions):
            raise ToolError("two functions have the same name")
        tools = Toolset(names=NameMap.build([*names, *(f.name for f in functions)]))
        for name in names:
            description, schema, mode = available[name]
            try:
                tools.add(self._spec(name, description, schema, tools.names.to_api[name]), mode)  # type: ignore[arg-type]
            except UnsupportedToolError as exc:
                logger.warning("%s", exc)
        for f in functions:
            try:
                tools.add(self._spec(f.name, f.description, f.input_schema, tools.names.to_api[f.name]), "return")
            except UnsupportedToolError as exc:
                raise ToolError(str(exc)) from exc
        choice = opts.tool_choice
        if choice not in ("auto", "none", "required") and choice not in tools.names.to_api:
            raise ToolError(f"tool_choice {choice!r} is not auto, none, required or the name of an offered tool")
        return tools

    # --- jobs -----------------------------------------------------------------------------

    def _finished_job(self, conv: Conversation) -> Job:
        job = Job(conv)
        job.done.set()
        return job

    def _start(self, conv: Conversation, tools: Toolset) -> Job:
        from server.bridge.loop import Loop

        if self.hub is not None:
            conv.notes.extend(self.hub.problems())
        job = Job(conv)
        self.jobs[conv.id] = job
        conv.status = "in_progress"
        self.store.put(conv)  # other replicas sharing the database see that it runs
        assert self.upstream is not None
        loop = Loop(upstream=self.upstream(), runner=self.runner, tools=tools, limits=self.limits, progress=job.notify)

        async def run() -> None:
            try:
                with job.scope:
                    await loop.run(conv)
                if job.scope.cancelled_caught:
                    conv.status, conv.error = "failed", "cancelled by the client"
            except Exception as exc:  # never let one conversation take the server down
                logger.exception("conversation %s crashed", conv.id)
                conv.status, conv.error = "failed", f"internal error: {type(exc).__name__}"
            finally:
                self.store.put(conv)
                self.jobs.pop(conv.id, None)
                job.done.set()

        self.task_group.start_soon(run)
        return job

    async def _wait(self, job: Job, progress: Callable[[str], Awaitable[None]] | None) -> RespondResult:
        job.listener = progress
        try:
            with anyio.move_on_after(self.settings.deadline):
                await job.done.wait()
        except anyio.get_cancelled_exc_class():
            job.scope.cancel()  # the client cancelled: stop the upstream request and the tools
            raise
        finally:
            job.listener = None
        conv = job.conversation
        if not job.done.is_set():
            snapshot = conv.model_copy(update={"status": "in_progress"})
            snapshot.notes = [
                *conv.notes,
                f"still working after {self.settings.deadline:g} s; call key4u_respond "
                f"with conversation_id={conv.id!r} (and nothing else) to wait for the result",
            ]
            return self.result(snapshot)
        return self.result(conv)

    def result(self, conv: Conversation) -> RespondResult:
        secrets = self.settings.secrets()
        return RespondResult(
            text=mask(conv.text, secrets),
            status=conv.status,
            conversation_id=conv.id,
            model=conv.model,
            turns=conv.turns,
            tool_calls=conv.tool_calls,
            pending_calls=conv.pending_calls,
            parsed=conv.parsed,
            usage=conv.usage,
            error=mask(conv.error, secrets) if conv.error else None,
            notes=conv.notes,
            transcript=f"key4u://conversations/{conv.id}",
        )

    async def aclose(self) -> None:
        for job in list(self.jobs.values()):
            job.scope.cancel()


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
    if result.pending_calls:
        lines += [
            f"- {p.call_id}: {p.name}({json.dumps(p.arguments, ensure_ascii=False)})" for p in result.pending_calls
        ]
    if result.error:
        lines.append(f"Error: {result.error}")
    lines += [f"Note: {n}" for n in result.notes]
    calls = result.tool_calls
    summary = (
        f"[{result.status} · model {result.model or 'unknown'} · {result.turns} turn(s) · "
        f"{len(calls)} tool call(s), {sum(not c.ok for c in calls)} failed · tokens in "
        f"{result.usage.input_tokens} / out {result.usage.output_tokens} · {result.conversation_id}]"
    )
    body = "\n".join(lines)
    marker = f"\n[... truncated; the full transcript is the resource {result.transcript}]"
    if len(body) > limit:
        body = body[:limit] + marker
    return f"{body}\n\n{summary}" if body else summary


def to_call_result(result: RespondResult, limit: int) -> CallToolResult:
    structured = result.model_dump(mode="json")
    from server.upstream.translation import cap

    structured["text"] = cap(structured["text"], limit)
    return CallToolResult(
        content=[TextContent(type="text", text=render(result, limit))],
        structured_content=structured,
        is_error=result.status == "failed",
    )


def transcript(conv: Conversation) -> str:
    """The full conversation as JSON: every item sent and received, and the trace."""
    return json.dumps(
        {
            "conversation_id": conv.id,
            "status": conv.status,
            "model": conv.model,
            "options": conv.options.model_dump(),
            "items": conv.items,
            "tool_calls": [t.model_dump() for t in conv.tool_calls],
            "usage": conv.usage.model_dump(),
            "created_at": conv.created_at,
            "updated_at": conv.updated_at,
        },
        ensure_ascii=False,
        indent=1,
    )


__all__ = ["Bridge", "FunctionDefinition", "FunctionOutput", "RespondResult", "to_call_result"]
