"""OpenTelemetry traces of ``key4u_respond``: off unless the standard ``OTEL_*`` variables ask for them.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``) is set, and off with ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``. It needs the ``[otel]`` extra; without it a warning says so and nothing
else changes. Every other ``OTEL_*`` variable (headers, protocol, sampler, resource, batching) is the
SDK's and works as documented there. While tracing is off, nothing of OpenTelemetry is imported here and
every span is one shared object whose methods do nothing.

The spans, in the GenAI semantic conventions (``gen_ai.*``, development status, as of 2026):

    tools/call key4u_respond          the MCP SDK's own SERVER span, child of the host's ``_meta`` traceparent
    └─ invoke_agent key4u_respond     ``respond_span``: one key4u_respond call (INTERNAL)
       ├─ chat gpt-4.1                ``turn_span``: one model turn (CLIENT): usage, finish reasons
       ├─ execute_tool current_time   ``tool_span``: one tool call the bridge ran (INTERNAL)
       ├─ ...                         (one per call of the turn, run in parallel: they overlap)
       └─ chat gpt-4.1                the next turn

Tool spans are siblings of the turn that asked for them, not its children: a ``chat`` span is the model
request and ends when the reply is in (its duration is the model's latency), and the tools run after
it. ``key4u.turn`` on every turn and tool span says which turn a call belongs to. A tool span is the
current span while its tool runs, so a downstream MCP server's call nests under it, and the SDK sends
the trace on to that server in the request's ``_meta``. A call that runs past the deadline goes on in
the background: its later turns still belong to the respond span that started them.

``error.type`` values: for a turn, the HTTP status of a gateway error (``"429"``), ``timeout``,
``failed`` (the model's response says it failed), ``cancelled``, or the error's class name; for a tool,
``tool_error`` (the tool answered with an error), ``timeout``, ``unknown_tool``, ``invalid_arguments``
(the model's mistakes, sent back to it), ``cancelled``, or the exception's class name.

Prompts, instructions, model output, tool arguments and results, and error messages appear only with
``KEY4U_TRACE_CONTENT=true`` (``gen_ai.input.messages``, ``gen_ai.output.messages``,
``gen_ai.system_instructions``, ``gen_ai.tool.call.arguments``, ``gen_ai.tool.call.result``, span status
descriptions). Every string any span carries, content or not, has the API key and the HTTP token masked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from server import __version__
from server.logs import mask

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue
    from typing_extensions import Self  # typing.Self from Python 3.11

    from server.bridge.conversation import Conversation
    from server.bridge.request import RespondResult
    from server.config import Settings
    from server.upstream.model import Item, ModelResponse

logger = logging.getLogger(__name__)

#: How long the last spans may take to leave when the server stops.
_FLUSH_BOUND = 5.0
_AGENT = "key4u_respond"
#: The wire is OpenAI's (Responses or Chat Completions) whatever model the gateway routes to; the
#: semantic conventions name the provider by the API the client speaks. ``server.address`` and
#: ``gen_ai.response.model`` say what is behind it.
_PROVIDER = "openai"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class _Quiet:
    """A span that records nothing: entered and left at no cost."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class RespondSpan(_Quiet):
    """One ``key4u_respond`` call. This class records nothing: it is what every call gets while tracing is off."""

    __slots__ = ()

    def record(self, result: RespondResult) -> None:
        """Where the call left the conversation: its id, status, model, API and turns."""


class TurnSpan(_Quiet):
    """One model turn; records nothing while tracing is off."""

    __slots__ = ()

    def record(self, response: ModelResponse) -> None:
        """The reply: the model as the gateway reports it, the API, token usage and finish reasons."""


class ToolSpan(_Quiet):
    """One tool call the bridge runs; records nothing while tracing is off."""

    __slots__ = ()

    def fail(self, error_type: str) -> None:
        """The call failed without an answer (``timeout``, or the exception's class name)."""

    def record(self, ok: bool, output: str) -> None:
        """The call's outcome: ``ok`` False is a tool error; ``output`` is what the model is sent."""


_NO_RESPOND = RespondSpan()
_NO_TURN = TurnSpan()
_NO_TOOL = ToolSpan()


class Telemetry:
    """The bridge's tracing. This class is tracing off: every span is a shared object that does nothing.

    ``Telemetry.from_env(settings)`` returns it, or a live subclass when the ``OTEL_*`` variables ask
    for traces and the ``[otel]`` extra is installed.
    """

    enabled: bool = False

    @staticmethod
    def from_env(settings: Settings, environ: Mapping[str, str] | None = None) -> Telemetry:
        """Tracing as the environment asks: off (the default), or spans exported as ``OTEL_*`` says."""
        env = os.environ if environ is None else environ
        if not _wanted(env):
            return OFF
        return _start(settings, env) or OFF

    def respond_span(
        self, request_meta: Mapping[str, Any] | None, conversation_id: str | None, model: str | None
    ) -> RespondSpan:
        """A span for one ``key4u_respond`` call, in the trace of the MCP request that carries it (the SDK's
        ``tools/call`` span, else the ``traceparent`` in ``request_meta``, the request's ``_meta``)."""
        return _NO_RESPOND

    def turn_span(self, conv: Conversation, turn: int) -> TurnSpan:
        """A span for model turn ``turn`` of ``conv``, entered just before the request is sent."""
        return _NO_TURN

    def tool_span(self, name: str, call_id: str, turn: int, arguments: Mapping[str, Any]) -> ToolSpan:
        """A span for one call of tool ``name`` (its MCP name), current while the tool runs."""
        return _NO_TOOL

    def rejected_call(self, name: str, call_id: str, turn: int, error_type: str) -> None:
        """A call that was never run: the model named no such tool, or wrote arguments its schema refuses."""

    async def aclose(self) -> None:
        """Send the spans still waiting and stop exporting (bounded: a collector that hangs is left behind)."""


OFF = Telemetry()


def _wanted(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    endpoints = (env.get(k, "").strip() for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    return bool(exporters) or any(endpoints)


def _content_wanted(env: Mapping[str, str]) -> bool:
    value = env.get("KEY4U_TRACE_CONTENT", "").strip().lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        logger.warning("KEY4U_TRACE_CONTENT=%r is not true or false; traces leave content out", value)
    return False


def _start(settings: Settings, env: Mapping[str, str]) -> Telemetry | None:
    """The live tracing, or None (with a warning saying why) when it cannot run."""
    try:
        from opentelemetry import trace
    except ImportError:
        trace = None
    if trace is None or importlib.util.find_spec("opentelemetry.sdk") is None:
        logger.warning(
            "OpenTelemetry tracing is configured (OTEL_* variables), but the SDK is not installed: "
            "pip install 'key4u-mcp[otel]'; continuing without traces"
        )
        return None
    current = trace.get_tracer_provider()
    owned: TracerProvider | None = None
    if isinstance(current, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        owned = _provider(env)
        if owned is None:
            return None
        # Global, so that the MCP SDK's own spans (tools/call, and calls to downstream servers) are
        # recorded too and this server's spans join them.
        trace.set_tracer_provider(owned)
    # else: the process already has one (opentelemetry-instrument, or an application embedding this
    # server): use it, and leave its shutdown to whoever made it.
    tracer = trace.get_tracer("key4u-mcp", __version__)
    content = _content_wanted(env)
    logger.info("OpenTelemetry tracing on%s", " (with prompts and outputs: KEY4U_TRACE_CONTENT)" if content else "")
    return _Tracing(tracer, owned, settings, content)


def _provider(env: Mapping[str, str]) -> TracerProvider | None:
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = _exporters(env)
    if not exporters:
        return None
    # Our name and version unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say otherwise.
    ours = Resource.create({"service.name": "key4u-mcp", "service.version": __version__})
    provider = TracerProvider(resource=ours.merge(OTELResourceDetector().detect()), shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (default ``otlp``); the ones that cannot run are skipped."""
    exporters: list[SpanExporter] = []
    for name in (n.strip() for n in (env.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp").split(",")):
        if name == "otlp":
            exporter = _otlp_exporter(env)
            if exporter is not None:
                exporters.append(exporter)
        elif name == "console":  # stderr: stdout is the stdio server's protocol wire
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter(out=sys.stderr))
        elif name and name != "none":
            logger.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console); skipped", name)
    return exporters


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter | None:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    ).strip()
    try:
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # pyright: ignore[reportMissingImports]
                OTLPSpanExporter as GrpcSpanExporter,  # pyright: ignore[reportUnknownVariableType]
            )

            return GrpcSpanExporter()  # pyright: ignore[reportUnknownVariableType]
    except ImportError:
        package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if protocol == "grpc" else "http")
        logger.warning("OTLP over %s needs the %s package; no traces are sent", protocol, package)
        return None
    logger.warning("OTLP protocol %r is not supported (http/protobuf, grpc); no traces are sent", protocol)
    return None


class _Tracing(Telemetry):
    """Tracing on: real spans, from one tracer."""

    enabled = True

    def __init__(self, tracer: Tracer, provider: TracerProvider | None, settings: Settings, content: bool) -> None:
        from opentelemetry import context, trace

        self.tracer = tracer
        # Bound once: a span's hot path makes no import statement.
        self.attach = context.attach
        self.detach = context.detach
        self.in_context = trace.set_span_in_context
        self.kinds = {"internal": trace.SpanKind.INTERNAL, "client": trace.SpanKind.CLIENT}
        self.error = trace.StatusCode.ERROR
        self.content = content
        self.secrets = settings.secrets()
        self.stream = settings.stream
        self._provider = provider
        parts = urlsplit(settings.base_url)
        self.server: dict[str, AttributeValue] = {"server.address": parts.hostname or ""}
        with contextlib.suppress(ValueError):  # a port that is not a number: left out
            self.server["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)

    def clean(self, text: str) -> str:
        return mask(text, self.secrets)

    def respond_span(
        self, request_meta: Mapping[str, Any] | None, conversation_id: str | None, model: str | None
    ) -> RespondSpan:
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": _PROVIDER,
            "gen_ai.agent.name": _AGENT,
            **self.server,
        }
        if model:
            attributes["gen_ai.request.model"] = model
        if conversation_id:
            attributes["gen_ai.conversation.id"] = conversation_id
        return _LiveRespond(self, f"invoke_agent {_AGENT}", attributes, _parent(request_meta))

    def turn_span(self, conv: Conversation, turn: int) -> TurnSpan:
        opts = conv.options
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": _PROVIDER,
            "gen_ai.request.model": opts.model,
            **self.server,
            "gen_ai.conversation.id": conv.id,
            "key4u.turn": turn,
        }
        if conv.api is not None:
            attributes["key4u.api"] = conv.api
        if self.stream:
            attributes["gen_ai.request.stream"] = True
        if opts.max_output_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = opts.max_output_tokens
        if opts.reasoning_effort is not None:
            attributes["gen_ai.request.reasoning.level"] = opts.reasoning_effort
        if opts.response_format is not None:
            attributes["gen_ai.output.type"] = "json"
        if self.content:
            if opts.instructions:
                attributes["gen_ai.system_instructions"] = _json([{"type": "text", "content": opts.instructions}])
            attributes["gen_ai.input.messages"] = _json(_messages(conv.items))
        return _LiveTurn(self, f"chat {opts.model}", attributes)

    def tool_span(self, name: str, call_id: str, turn: int, arguments: Mapping[str, Any]) -> ToolSpan:
        attributes = _tool_attributes(name, call_id, turn)
        if self.content:
            attributes["gen_ai.tool.call.arguments"] = _json(arguments)
        return _LiveTool(self, f"execute_tool {name}", attributes)

    def rejected_call(self, name: str, call_id: str, turn: int, error_type: str) -> None:
        name = name[:200]  # the model wrote it
        with _LiveTool(self, f"execute_tool {name}", _tool_attributes(name, call_id, turn)) as span:
            span.fail(error_type)

    async def aclose(self) -> None:
        provider, self._provider = self._provider, None
        if provider is None:
            return
        import anyio

        with anyio.move_on_after(_FLUSH_BOUND, shield=True) as bounded:
            await anyio.to_thread.run_sync(provider.shutdown, abandon_on_cancel=True)
        if bounded.cancelled_caught:
            logger.warning("the trace exporter did not finish within %g s; the last spans may be lost", _FLUSH_BOUND)


def _parent(request_meta: Mapping[str, Any] | None) -> Context | None:
    """The host's trace from ``_meta``, when no span is current (an SDK that makes no span of its own)."""
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    if not request_meta or trace.get_current_span().get_span_context().is_valid:
        return None  # the SDK's tools/call span is current: it already joined the host's trace
    try:
        context = extract({k: v for k, v in request_meta.items() if isinstance(v, str)})
    except (ValueError, TypeError):
        return None
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def _tool_attributes(name: str, call_id: str, turn: int) -> dict[str, AttributeValue]:
    return {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function",  # the model asks, the bridge runs it
        "key4u.turn": turn,
    }


class _Live:
    """An OpenTelemetry span, current from ``__enter__`` to ``__exit__``; every string in it masked."""

    kind: Literal["internal", "client"] = "internal"

    def __init__(
        self, tracing: _Tracing, name: str, attributes: dict[str, AttributeValue], parent: Context | None = None
    ) -> None:
        self.tracing = tracing
        self.name = name
        self.attributes = attributes
        self.parent = parent
        self.error_type: str | None = None
        self.description: str | None = None
        self.span: Span | None = None
        self.token: Token[Context] | None = None

    def set(self, key: str, value: AttributeValue) -> None:
        if self.span is not None:
            self.span.set_attribute(key, self.tracing.clean(value) if isinstance(value, str) else value)

    def fail(self, error_type: str, description: str | None = None) -> None:
        self.error_type = error_type
        if description and self.tracing.content:
            self.description = description

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(exc)

    def open(self) -> None:
        tracing = self.tracing
        clean = tracing.clean
        attributes = {k: clean(v) if isinstance(v, str) else v for k, v in self.attributes.items()}
        self.span = tracing.tracer.start_span(
            clean(self.name), context=self.parent, kind=tracing.kinds[self.kind], attributes=attributes
        )
        self.token = tracing.attach(tracing.in_context(self.span, self.parent))

    def close(self, exc: BaseException | None) -> None:
        span, self.span = self.span, None
        if span is None:
            return
        if exc is not None:
            self.fail(_error_type(exc), str(exc))
        if self.error_type is not None:
            span.set_attribute("error.type", self.error_type)
            description = self.tracing.clean(self.description) if self.description else None
            span.set_status(self.tracing.error, description)
        span.end()
        if self.token is not None:
            self.tracing.detach(self.token)


class _LiveRespond(_Live, RespondSpan):
    def record(self, result: RespondResult) -> None:
        self.set("gen_ai.conversation.id", result.conversation_id)
        self.set("key4u.status", result.status)
        self.set("key4u.turns", result.turns)
        self.set("key4u.tool_calls", len(result.tool_calls))
        if result.model:
            self.set("gen_ai.response.model", result.model)
        if result.api:
            self.set("key4u.api", result.api)
        if result.status == "failed":
            self.fail("failed", result.error)


class _LiveTurn(_Live, TurnSpan):
    kind = "client"

    def record(self, response: ModelResponse) -> None:
        self.set("key4u.api", response.api)
        if response.model:
            self.set("gen_ai.response.model", response.model)
        if response.id:
            self.set("gen_ai.response.id", response.id)
        usage = response.usage
        if usage is not None:
            self.set("gen_ai.usage.input_tokens", usage.input_tokens)
            self.set("gen_ai.usage.output_tokens", usage.output_tokens)
            if usage.cached_tokens:
                self.set("gen_ai.usage.cache_read.input_tokens", usage.cached_tokens)
            if usage.reasoning_tokens:
                self.set("gen_ai.usage.reasoning.output_tokens", usage.reasoning_tokens)
        reason = _finish_reason(response)
        self.set("gen_ai.response.finish_reasons", (reason,))
        if self.tracing.content:
            message = {**_message("assistant", response.output), "finish_reason": reason}
            self.set("gen_ai.output.messages", _json([message]))
        if response.status == "failed":
            self.fail("failed", response.error)


class _LiveTool(_Live, ToolSpan):
    def record(self, ok: bool, output: str) -> None:
        if ok and self.tracing.content:
            self.set("gen_ai.tool.call.result", output)
        elif not ok and self.error_type is None:
            self.fail("tool_error", output)


def _error_type(exc: BaseException) -> str:
    import anyio

    from server.errors import UpstreamHTTPError, UpstreamTimeout

    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled"
    if isinstance(exc, UpstreamHTTPError):
        return str(exc.status_code)
    if isinstance(exc, (UpstreamTimeout, TimeoutError)):
        return "timeout"
    return type(exc).__qualname__


def _finish_reason(response: ModelResponse) -> str:
    """The conventions' finish reason (``stop``, ``tool_calls``, ``length``, ``content_filter``, ``error``)."""
    if response.status == "failed":
        return "error"
    if response.status == "incomplete":
        reason = response.incomplete_reason or "error"
        return "length" if reason in ("max_output_tokens", "max_tokens") else reason
    return "tool_calls" if response.function_calls else "stop"


def _messages(items: Sequence[Item]) -> list[dict[str, Any]]:
    """The conversation as the conventions' input messages: consecutive items of one role in one message."""
    from server.upstream.model import FunctionOutput, Message

    messages: list[dict[str, Any]] = []
    for item in items:
        role = item.role if isinstance(item, Message) else "tool" if isinstance(item, FunctionOutput) else "assistant"
        parts = _parts(item)
        if not parts:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["parts"].extend(parts)
        else:
            messages.append({"role": role, "parts": parts})
    return messages


def _message(role: str, items: Sequence[Item]) -> dict[str, Any]:
    return {"role": role, "parts": [part for item in items for part in _parts(item)]}


def _parts(item: Item) -> list[dict[str, Any]]:
    from server.upstream.model import FunctionCall, FunctionOutput, Message

    if isinstance(item, Message):
        return [{"type": "text", "content": item.text}]
    if isinstance(item, FunctionCall):
        try:
            arguments: Any = json.loads(item.arguments)
        except ValueError:
            arguments = item.arguments
        return [{"type": "tool_call", "id": item.call_id, "name": item.name, "arguments": arguments}]
    if isinstance(item, FunctionOutput):
        return [{"type": "tool_call_response", "id": item.call_id, "response": item.output}]
    return []  # reasoning: encrypted, nothing to read


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


__all__ = ["OFF", "RespondSpan", "Telemetry", "ToolSpan", "TurnSpan"]
