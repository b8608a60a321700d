"""The function-calling loop: send, run the turn's calls in parallel, send their outputs,
until the model answers, a call is the caller's to run, or a bound is reached."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from server.bridge.approval import NOBODY, ApprovalRequest, Verdict
from server.bridge.attachments import MAX_TOTAL_BYTES, tool_images
from server.bridge.conversation import Approval, Conversation, PendingCall, ToolCallTrace, TurnUsage
from server.errors import UpstreamError
from server.telemetry import OFF, Telemetry
from server.toolsets.base import OfferedTool, RunMode
from server.upstream.model import (
    Attachment,
    FunctionCall,
    FunctionOutput,
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    StreamEvent,
)
from server.upstream.translation import (
    MAX_OUTPUT_CHARS,
    ArgumentError,
    FunctionSpec,
    NameMap,
    error_output,
    parse_arguments,
    result_to_output,
)

if TYPE_CHECKING:
    from server.upstream.pricing import Prices

logger = logging.getLogger(__name__)

Progress = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Offered:
    """One function offered to the model: its API form, and the tool that takes its calls."""

    spec: FunctionSpec
    tool: OfferedTool

    @property
    def mode(self) -> RunMode:
        return self.tool.mode


@dataclass
class Offer:
    """The functions offered in one conversation, by the names the API sees."""

    offered: dict[str, Offered] = field(default_factory=dict[str, Offered])  # by API name
    names: NameMap = field(default_factory=NameMap)

    def add(self, spec: FunctionSpec, tool: OfferedTool) -> None:
        self.offered[spec.api_name] = Offered(spec, tool)

    def api_name(self, mcp_name: str) -> str | None:
        return self.names.to_api.get(mcp_name)


@dataclass(frozen=True)
class LoopLimits:
    """The bounds a loop runs under: parallel calls, each call's timeout, and the size of an output."""

    concurrency: int = 16
    call_timeout: float = 60.0
    output_chars: int = MAX_OUTPUT_CHARS
    heartbeat: float = 10.0
    """Longest silence, in seconds, between progress reports while a turn waits on the model: hosts with an
    idle timeout reset it on progress."""


def model_request(conv: Conversation, tools: Offer) -> ModelRequest:
    """The next turn of ``conv``, in neutral form."""
    opts = conv.options
    choice = opts.tool_choice
    if choice not in ("auto", "none", "required"):
        choice = tools.api_name(choice) or choice
    return ModelRequest(
        model=opts.model,
        items=tuple(conv.items),  # a snapshot: the conversation grows after the request is sent
        instructions=opts.instructions,
        tools=[o.spec for o in tools.offered.values()],
        tool_choice=choice,
        parallel_tool_calls=opts.parallel_tool_calls,
        reasoning_effort=opts.reasoning_effort,
        response_format=opts.response_format,
        max_output_tokens=opts.max_output_tokens,
        metadata=opts.metadata,
        web_search=opts.web_search,
        api=conv.api,
        previous_response_id=conv.previous_response_id,
        new_from=conv.unsent_from,
    )


def _add_usage(conv: Conversation, turn: int, response: ModelResponse, prices: Prices | None) -> None:
    """Add the turn's tokens to the totals, priced under the model name requested (the one the gateway
    bills), and record the turn in ``run_turns``. Pricing never waits: what is not loaded is unknown."""
    usage = response.usage
    model = conv.options.model
    record = TurnUsage(turn=turn, model=model, api=response.api, at=time.time())
    if usage is not None:
        record.input_tokens, record.output_tokens = usage.input_tokens, usage.output_tokens
        record.cached_tokens, record.reasoning_tokens = usage.cached_tokens, usage.reasoning_tokens
    if usage is None:
        record.cost_note = "the gateway reported no token usage for this turn"
    elif prices is None:
        record.cost_note = "no prices: the gateway publishes none here and KEY4U_PRICES is not set"
    elif (cost := prices.cost(model, usage.input_tokens, usage.output_tokens, usage.cached_tokens)) is not None:
        record.cost_usd = cost.usd
    else:
        record.cost_note = prices.why_unpriced(model) or "its price is unknown"
    conv.run_turns.append(record)
    total = conv.usage
    total.input_tokens += record.input_tokens
    total.output_tokens += record.output_tokens
    total.cached_tokens += record.cached_tokens
    total.reasoning_tokens += record.reasoning_tokens
    total.total_tokens = total.input_tokens + total.output_tokens
    if record.cost_usd is None:  # one unknown turn makes the total unknown: never a guess
        total.cost_usd = None
        total.cost_note = total.cost_note or f"turn {turn}: {record.cost_note}"
    elif total.cost_note is None:
        total.cost_usd = round((total.cost_usd or 0.0) + record.cost_usd, 10)


@dataclass
class Loop:
    """Runs one conversation's turns: sends each request, runs the turn's ``run``-mode calls in parallel,
    and hands ``return``-mode calls back to the caller as pending calls.

    It changes the conversation in place and never saves it: the job does.
    """

    model: Model
    tools: Offer
    limits: LoopLimits = field(default_factory=LoopLimits)
    progress: Progress | None = None
    #: What a turn costs; None when nothing is priced.
    prices: Prices | None = None
    telemetry: Telemetry = OFF
    #: Asks the person about a call of an ``ask`` tool; None: nobody can (such calls come back pending).
    approve: Callable[[ApprovalRequest], Awaitable[Verdict]] | None = None
    clock_start: float = field(default_factory=time.perf_counter)
    _stages: set[str] = field(default_factory=set[str])
    #: This run's verdicts by call id, for the calls' traces.
    _approved: dict[str, str] = field(default_factory=dict[str, str])
    #: Images the tools of this turn returned, and the bytes of images the run may still send.
    _tool_images: list[Attachment] = field(default_factory=list[Attachment])
    _images_left: int = MAX_TOTAL_BYTES
    _last_said: float = field(default_factory=time.perf_counter)

    async def _say(self, message: str) -> None:
        self._last_said = time.perf_counter()
        if self.progress is not None:
            await self.progress(message)

    async def _ask(self, conv: Conversation, turn: int) -> ModelResponse:
        """One model turn, with progress at least every ``heartbeat`` seconds until it answers."""
        response: ModelResponse | None = None
        failure: UpstreamError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat, turn, conv.options.model)
            try:
                response = await self.model.respond(model_request(conv, self.tools), self._on_event)
            except UpstreamError as exc:  # raised as itself, not inside the task group's exception group
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        assert response is not None
        return response

    async def _heartbeat(self, turn: int, model: str) -> None:
        """While the model is silent (a reasoning model thinking), say so every ``heartbeat`` seconds."""
        started = time.perf_counter()
        while True:
            await anyio.sleep(max(0.05, self.limits.heartbeat - (time.perf_counter() - self._last_said)))
            if time.perf_counter() - self._last_said >= self.limits.heartbeat:
                await self._say(f"turn {turn}: still waiting for {model} ({time.perf_counter() - started:.0f} s)")

    async def run(self, conv: Conversation) -> Conversation:
        """Advance ``conv`` until it is completed, needs the caller, or stops; never raises
        ``UpstreamError`` (it becomes status ``failed``)."""
        conv.status, conv.error = "in_progress", None
        max_turns = conv.options.max_turns
        try:
            while True:
                if conv.turns >= max_turns:
                    conv.status = "incomplete"
                    conv.notes.append(f"stopped after max_turns={max_turns} model turns without a final answer")
                    return conv
                if await self._turn(conv):
                    return conv
        except UpstreamError as exc:
            conv.status, conv.error = "failed", str(exc)
            return conv

    async def _turn(self, conv: Conversation) -> bool:
        """One model turn; True when the conversation stops here."""
        turn = conv.turns + 1
        self._stages = set[str]()
        await self._say(f"turn {turn}: waiting for {conv.options.model}")
        with self.telemetry.turn_span(conv, turn) as span:  # the model request only: the tools run after it
            response = await self._ask(conv, turn)
            span.record(response)
        conv.turns, conv.api = turn, response.api
        conv.model = response.model or conv.model
        _add_usage(conv, turn, response, self.prices)
        conv.previous_response_id = response.id
        conv.items.extend(response.output)
        conv.unsent_from = len(conv.items)
        conv.notes.extend(n for n in response.notes if n not in conv.notes)
        conv.text = response.text or conv.text
        if response.status == "failed":
            conv.status, conv.error = "failed", response.error or "the model's response failed"
            return True
        calls = response.function_calls
        if response.status == "incomplete":
            conv.status = "incomplete"
            conv.notes.append(
                f"the response is incomplete ({response.incomplete_reason or 'unknown'})"
                + (f"; {len(calls)} function call(s) with possibly truncated arguments were not run" if calls else "")
            )
            # Replayed calls need outputs, or the next request is refused.
            for call in calls:
                conv.items.append(
                    FunctionOutput(call_id=call.call_id, output=error_output("not run: the response was cut off"))
                )
            return True
        if not calls:
            conv.status = "completed"
            self._parse_structured(conv)
            return True
        return await self._run_calls(conv, calls, turn)

    async def _on_event(self, event: StreamEvent) -> None:
        """One notification per stage of a turn (the first call, the first text), however the reply streams."""
        stage = "the model is calling tools" if event.kind == "function_call" else "the model is writing"
        if stage not in self._stages:
            self._stages.add(stage)
            await self._say(stage)

    def _parse_structured(self, conv: Conversation) -> None:
        if conv.options.response_format is None:
            return
        try:
            conv.parsed = json.loads(conv.text)
        except ValueError:
            conv.notes.append("response_format was requested but the answer is not valid JSON")

    async def _run_calls(self, conv: Conversation, calls: Sequence[FunctionCall], turn: int) -> bool:
        outputs: dict[str, str] = {}
        to_run: list[tuple[FunctionCall, Offered, dict[str, Any]]] = []
        asked: list[tuple[FunctionCall, Offered, dict[str, Any]]] = []
        pending: list[PendingCall] = []
        for call in calls:
            offered = self.tools.offered.get(call.name)
            if offered is None:
                outputs[call.call_id] = error_output(
                    f"there is no tool named {call.name!r}; available: {', '.join(self.tools.offered) or 'none'}"
                )
                self.telemetry.rejected_call(call.name, call.call_id, turn, "unknown_tool")
                self._trace(conv, turn, call, call.name, call.arguments, False, 0.0, 0.0, outputs[call.call_id])
                continue
            try:
                arguments = parse_arguments(offered.spec, call.arguments)
            except ArgumentError as exc:
                outputs[call.call_id] = error_output(str(exc))
                self.telemetry.rejected_call(offered.spec.mcp_name, call.call_id, turn, "invalid_arguments")
                self._trace(conv, turn, call, call.name, call.arguments, False, 0.0, 0.0, outputs[call.call_id])
                continue
            if offered.mode == "return":
                pending.append(PendingCall(call_id=call.call_id, name=offered.spec.mcp_name, arguments=arguments))
            elif offered.mode == "ask":
                asked.append((call, offered, arguments))
            else:
                to_run.append((call, offered, arguments))
        for call, offered, arguments in asked:  # one form after another: a person answers one at a time
            approved = await self._approval(conv, turn, call, offered, arguments, outputs)
            if approved is not None:
                to_run.append((call, offered, approved))
            elif call.call_id not in outputs:  # nobody could be asked: the caller decides, as in return mode
                pending.append(PendingCall(call_id=call.call_id, name=offered.spec.mcp_name, arguments=arguments))
        if to_run:
            await self._say(f"turn {turn}: running {len(to_run)} tool call(s) in parallel")
            limiter = anyio.CapacityLimiter(self.limits.concurrency)
            started, traced = time.perf_counter(), len(conv.tool_calls)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat, turn, "the tools")
                async with anyio.create_task_group() as calls_group:
                    for call, offered, arguments in to_run:
                        calls_group.start_soon(self._run_one, conv, turn, call, offered, arguments, outputs, limiter)
                tg.cancel_scope.cancel()
            failed = sum(not t.ok for t in conv.tool_calls[traced:])
            await self._say(
                f"turn {turn}: {len(to_run)} tool call(s) done in {(time.perf_counter() - started) * 1000:.0f} ms"
                + (f", {failed} failed" if failed else "")
            )
        for call in calls:
            if call.call_id in outputs:
                conv.items.append(FunctionOutput(call_id=call.call_id, output=outputs[call.call_id]))
        if self._tool_images:  # what the tools showed: a user message of images alone, after every output
            conv.items.append(Message(role="user", attachments=self._tool_images))
            self._tool_images = []
        if pending:
            conv.pending_calls = pending
            conv.status = "requires_action"
            return True
        return False

    async def _approval(
        self,
        conv: Conversation,
        turn: int,
        call: FunctionCall,
        offered: Offered,
        arguments: dict[str, Any],
        outputs: dict[str, str],
    ) -> dict[str, Any] | None:
        """The arguments to run an ``ask`` call with once approved; None when it is not to run (denied: its
        output in ``outputs``; not asked: it becomes a pending call)."""
        name = offered.spec.mcp_name
        if name in conv.approved_tools:
            verdict = Verdict("approved", "approved for this conversation earlier")
        else:
            request = ApprovalRequest(name, arguments, offered.tool.input_schema, conv.options.model, conv.id, turn)
            await self._say(f"turn {turn}: asking you to approve {name}")
            verdict = NOBODY if self.approve is None else await self.approve(request)
        conv.approvals.append(
            Approval(
                turn=turn,
                call_id=call.call_id,
                tool=name,
                decision=verdict.decision,
                by=verdict.by,
                reason=verdict.reason,
                edited=verdict.edited,
            )
        )
        if verdict.decision == "not asked":
            conv.notes.append(f"{name} needs approval, but {verdict.by}: it comes back to you as a pending call")
            return None
        label = f"{verdict.decision} ({verdict.by})"
        self._approved[call.call_id] = label
        if not verdict.approved:
            why = f": {verdict.reason}" if verdict.reason else ""
            outputs[call.call_id] = error_output(
                f"the user did not approve this call of {name} ({verdict.decision}){why}"
            )
            self._trace(conv, turn, call, name, arguments, False, 0.0, 0.0, outputs[call.call_id])
            return None
        if verdict.decision == "approved for this conversation" and name not in conv.approved_tools:
            conv.approved_tools.append(name)
        if not verdict.edited or verdict.arguments is None:
            return arguments
        try:  # the person's edits are checked as the model's arguments are
            return parse_arguments(offered.spec, json.dumps(verdict.arguments))
        except ArgumentError as exc:
            outputs[call.call_id] = error_output(f"the arguments the user edited do not fit {name}: {exc}")
            self._trace(conv, turn, call, name, verdict.arguments, False, 0.0, 0.0, outputs[call.call_id])
            return None

    async def _run_one(
        self,
        conv: Conversation,
        turn: int,
        call: FunctionCall,
        offered: Offered,
        arguments: dict[str, Any],
        outputs: dict[str, str],
        limiter: anyio.CapacityLimiter,
    ) -> None:
        name = offered.spec.mcp_name
        async with limiter:
            started = time.perf_counter()
            ok = False
            with self.telemetry.tool_span(name, call.call_id, turn, arguments) as span:
                try:
                    with anyio.fail_after(self.limits.call_timeout):
                        # A little under the loop's own bound, so that a downstream server can mark itself hung first.
                        result = await offered.tool.call(arguments, self.limits.call_timeout * 0.95)
                    output = result_to_output(result, self.limits.output_chars)
                    if result.content and self._images_left > 0:  # images go to the model after the outputs
                        shown = tool_images(result, self._images_left)
                        self._images_left -= sum(a.size for a in shown)
                        self._tool_images += shown
                    ok = not result.is_error
                except TimeoutError:
                    output = error_output(f"{name} did not finish within {self.limits.call_timeout:g} s")
                    span.fail("timeout")
                except Exception as exc:  # a tool's failure is reported to the model, never raised
                    logger.exception("tool %s failed", name)
                    output = error_output(f"{name} failed: {type(exc).__name__}: {exc}")
                    span.fail(type(exc).__name__)
                span.record(ok, output)
            ms = (time.perf_counter() - started) * 1000
            outputs[call.call_id] = output
            self._trace(conv, turn, call, name, arguments, ok, ms, (started - self.clock_start) * 1000, output)

    def _trace(
        self,
        conv: Conversation,
        turn: int,
        call: FunctionCall,
        name: str,
        arguments: dict[str, Any] | str,
        ok: bool,
        ms: float,
        started_ms: float,
        output: str,
    ) -> None:
        conv.tool_calls.append(
            ToolCallTrace(
                turn=turn,
                call_id=call.call_id,
                name=name,
                arguments=arguments,
                ok=ok,
                ms=round(ms, 2),
                started_ms=round(started_ms, 2),
                output=output[:500],
                approval=self._approved.get(call.call_id),
            )
        )
