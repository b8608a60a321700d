"""OpenTelemetry traces: off and free by default; with OTEL_* set, one span per key4u_respond call, per model
turn and per tool call, in the host's trace, with no content (and never the key) unless asked for.

The tests that record spans need the SDK (the ``[otel]`` extra, which ``[test]`` includes).
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from server.bridge.conversation import Conversation, Options
from server.cli.demo import KEY4U_PROMPT
from server.config import Settings
from server.standin import Faults, StandIn
from server.telemetry import OFF, Telemetry
from server.upstream.model import ModelResponse, TokenUsage
from tests.conftest import FAKE_KEY
from tests.helpers import INITIALIZE, LOCAL_TOOLS, bridge_client, raw_session, settings_for, stdio_exchange

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

pytestmark = pytest.mark.anyio

#: What the Key4U example's prompt, arguments and outputs contain: none of it may reach a span by default.
CONTENT = ("Please help me", "parallel tool call test", "123.5", "456.7", "580.2")
CONTENT_KEYS = {
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
}
HOST_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HOST_SPAN = "00f067aa0ba902b7"


@pytest.fixture(autouse=True)
def _no_ambient_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: not the developer's collector."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


# -- tracing off ---------------------------------------------------------------------------------------------


def test_tracing_is_off_without_otel_variables(tmp_path: Path) -> None:
    telemetry = Telemetry.from_env(settings_for("http://127.0.0.1:9/v1", tmp_path), environ={})
    assert telemetry is OFF and not telemetry.enabled
    for env in (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces", "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SERVICE_NAME": "x", "OTEL_EXPORTER_OTLP_ENDPOINT": "  "},
    ):
        assert Telemetry.from_env(Settings(), environ=env) is OFF, env


def test_tracing_off_costs_next_to_nothing_per_turn() -> None:
    conv = Conversation(options=Options(model="gpt-4.1"))
    response = ModelResponse(api="responses", usage=TokenUsage(input_tokens=1, output_tokens=1))
    rounds = 20_000
    started = time.perf_counter()
    for turn in range(rounds):  # one turn with four tool calls, as the loop makes them
        with OFF.turn_span(conv, turn) as span:
            span.record(response)
        for n in range(4):
            with OFF.tool_span("current_time", f"call_{n}", turn, {}) as tool:
                tool.record(True, "")
    per_turn = (time.perf_counter() - started) / rounds
    assert per_turn < 50e-6, f"{per_turn * 1e6:.1f} µs per turn with tracing off"  # measured: about 1.5 µs


def test_start_up_imports_nothing_of_the_sdk(tmp_path: Path) -> None:
    code = (
        "import sys, server.surface.app\n"
        "from server.config import Settings\n"
        "from server.telemetry import Telemetry\n"
        "assert not Telemetry.from_env(Settings()).enabled\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KEY4U_", "OPENAI_"))}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_otel_variables_without_the_sdk_warn_and_change_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "opentelemetry.sdk" else real(name)
    )
    telemetry = Telemetry.from_env(Settings(), environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert telemetry is OFF
    assert "key4u-mcp[otel]" in caplog.text


# -- spans, in process ---------------------------------------------------------------------------------------


class _Switch:
    """Forwards ended spans to the current test's exporter; drops them between tests."""

    def __init__(self) -> None:
        self.target: SpanProcessor | None = None

    def __getattr__(self, name: str) -> Any:  # the rest of SpanProcessor: nothing to do
        return lambda *args, **kwargs: True

    def on_end(self, span: ReadableSpan) -> None:
        if self.target is not None:
            self.target.on_end(span)


@pytest.fixture(scope="session")
def _switch() -> _Switch:
    """The process's tracer provider, set once (a global can be set only once), recording into ``_Switch``."""
    pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    switch = _Switch()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(switch)  # type: ignore[arg-type]
    return switch


@pytest.fixture
def spans(_switch: _Switch, monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing asked for, the spans recorded in memory: the server's own and the MCP SDK's."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    # Asks for traces; the provider above takes them (an existing provider is used, never replaced).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    exporter = InMemorySpanExporter()
    _switch.target = SimpleSpanProcessor(exporter)
    yield exporter
    _switch.target = None


async def _respond(settings: Settings, **arguments: Any) -> dict[str, Any]:
    async with bridge_client(settings) as client:
        result = await client.call_tool("key4u_respond", arguments)
    assert result.structured_content is not None
    return result.structured_content


def _named(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name.startswith(prefix)), key=lambda s: s.start_time or 0)


def _ids(span: ReadableSpan) -> tuple[int, int]:
    """The span's trace id and span id."""
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _texts(span: ReadableSpan) -> Iterator[str]:
    """Every string a span carries: its name, attributes, status, events and resource."""
    yield span.name
    yield span.status.description or ""
    for attributes in (span.attributes, span.resource.attributes, *(e.attributes for e in span.events)):
        for key, value in (attributes or {}).items():
            yield f"{key}={value}"


def _all_text(spans: Sequence[ReadableSpan]) -> str:
    return "\n".join(t for s in spans for t in _texts(s))


async def test_the_key4u_example_is_one_respond_span_two_turns_and_four_tool_calls(
    spans: InMemorySpanExporter, standin: StandIn, tmp_path: Path
) -> None:
    out = await _respond(settings_for(standin.base_url, tmp_path), prompt=KEY4U_PROMPT, metadata={"model_id": "32"})
    assert out["status"] == "completed"
    recorded = spans.get_finished_spans()
    (respond,) = _named(recorded, "invoke_agent ")
    turns = _named(recorded, "chat ")
    tools = _named(recorded, "execute_tool ")
    assert len(turns) == 2 and len(tools) == 4
    assert {_ids(s)[0] for s in (respond, *turns, *tools)} == {_ids(respond)[0]}
    # Turns and tool calls are siblings under the respond span: a chat span is the model request alone.
    assert {_parent_id(s) for s in (*turns, *tools)} == {_ids(respond)[1]}
    first, second = turns
    assert all(first.end_time <= t.start_time <= second.start_time for t in tools)  # type: ignore[operator]
    # The MCP SDK's own span for the request, when it makes one, is the respond span's parent.
    sdk = [s for s in recorded if s.name == "tools/call key4u_respond"]
    if sdk:
        assert _parent_id(respond) == _ids(sdk[0])[1]

    assert respond.name == "invoke_agent key4u_respond"
    assert (
        dict(respond.attributes or {}).items()
        >= {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "key4u_respond",
            "gen_ai.provider.name": "openai",
            "gen_ai.conversation.id": out["conversation_id"],
            "gen_ai.response.model": "gpt-4.1",
            "key4u.status": "completed",
            "key4u.api": "responses",
            "key4u.turns": 2,
            "key4u.tool_calls": 4,
        }.items()
    )
    for n, (turn, reason) in enumerate(zip(turns, ("tool_calls", "stop"), strict=True), start=1):
        attributes = turn.attributes or {}
        assert turn.name == "chat gpt-4.1" and turn.kind.name == "CLIENT"
        assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.request.model"] == "gpt-4.1" and attributes["gen_ai.response.model"] == "gpt-4.1"
        assert attributes["key4u.api"] == "responses" and attributes["key4u.turn"] == n
        assert attributes["gen_ai.conversation.id"] == out["conversation_id"]
        assert tuple(attributes["gen_ai.response.finish_reasons"]) == (reason,)  # type: ignore[arg-type]
        assert isinstance(attributes["gen_ai.usage.input_tokens"], int) and attributes["gen_ai.usage.input_tokens"] > 0
        assert isinstance(attributes["gen_ai.usage.output_tokens"], int)
        assert f"http://{attributes['server.address']}:{attributes['server.port']}/v1" == standin.base_url
        assert turn.status.is_ok and "error.type" not in attributes
    by_call = {c["call_id"]: c for c in out["tool_calls"]}
    assert {str((t.attributes or {})["gen_ai.tool.name"]) for t in tools} == LOCAL_TOOLS
    for tool in tools:
        attributes = tool.attributes or {}
        call = by_call[str(attributes["gen_ai.tool.call.id"])]
        assert tool.name == f"execute_tool {call['name']}" and tool.kind.name == "INTERNAL"
        assert attributes["gen_ai.operation.name"] == "execute_tool" and attributes["key4u.turn"] == 1
        assert tool.status.is_ok and "error.type" not in attributes
    # By default: no prompt, argument or output anywhere, in any span (the SDK's included), and never the key.
    text = _all_text(recorded)
    assert not [c for c in CONTENT if c in text]
    assert FAKE_KEY not in text
    assert not [k for s in recorded for k in s.attributes or {} if k in CONTENT_KEYS]


async def test_content_is_recorded_only_when_asked_and_the_key_is_masked(
    spans: InMemorySpanExporter, standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY4U_TRACE_CONTENT", "true")
    settings = settings_for(standin.base_url, tmp_path)
    await _respond(settings, prompt=KEY4U_PROMPT, instructions="Answer briefly.")
    recorded = spans.get_finished_spans()
    first, second = (s.attributes or {} for s in _named(recorded, "chat "))
    messages = json.loads(str(first["gen_ai.input.messages"]))
    assert messages == [{"role": "user", "parts": [{"type": "text", "content": KEY4U_PROMPT}]}]
    assert json.loads(str(first["gen_ai.system_instructions"])) == [{"type": "text", "content": "Answer briefly."}]
    (called,) = json.loads(str(first["gen_ai.output.messages"]))
    assert called["finish_reason"] == "tool_calls" and {p["type"] for p in called["parts"]} == {"tool_call"}
    replayed = json.loads(str(second["gen_ai.input.messages"]))
    assert [m["role"] for m in replayed] == ["user", "assistant", "tool"] and len(replayed[2]["parts"]) == 4
    assert "580.2" in str(second["gen_ai.output.messages"])
    tools = {
        str(t.attributes["gen_ai.tool.name"]): t.attributes for t in _named(recorded, "execute_tool ") if t.attributes
    }
    assert json.loads(str(tools["math_calculator"]["gen_ai.tool.call.arguments"])) == {
        "operation": "add",
        "a": 123.5,
        "b": 456.7,
    }
    assert "580.2" in str(tools["math_calculator"]["gen_ai.tool.call.result"])

    # Content or not, the key is masked: in the prompt, in the model's answer, in a tool's arguments.
    spans.clear()
    standin.faults = Faults(answer_text=f"your key is {FAKE_KEY}")
    await _respond(settings, prompt=f'Calculate 2 + 3, my key is "{FAKE_KEY}"', tools=["math_calculator"])
    text = _all_text(spans.get_finished_spans())
    assert "your key is ***" in text and "my key is" in text
    assert FAKE_KEY not in text


async def test_the_respond_span_joins_the_hosts_trace(
    spans: InMemorySpanExporter, standin: StandIn, tmp_path: Path
) -> None:
    """The host's client injects its span into the request's ``_meta``; the SDK's span and ours follow it."""
    from opentelemetry import trace

    host_tracer = trace.get_tracer("a host")
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        with host_tracer.start_as_current_span("host asks") as host:
            result = await client.call_tool("key4u_respond", {"prompt": "hello"})
    assert not result.is_error
    recorded = spans.get_finished_spans()
    by_id = {_ids(s)[1]: s for s in recorded}
    (respond,) = _named(recorded, "invoke_agent ")
    assert _ids(respond)[0] == host.get_span_context().trace_id
    chain: list[str] = []
    span: ReadableSpan | None = respond
    while span is not None and span.parent is not None:
        span = by_id.get(span.parent.span_id)
        chain.append(span.name if span is not None else "?")
    assert chain[-1] == "host asks", chain
    assert "tools/call key4u_respond" in chain  # the SDK's server span is between the host and us


def test_a_traceparent_in_meta_is_the_parent_when_no_span_is_current(spans: InMemorySpanExporter) -> None:
    """An SDK that makes no span of its own: the respond span reads the host's trace from ``_meta`` itself."""
    telemetry = Telemetry.from_env(Settings())
    assert telemetry.enabled
    meta = {"progressToken": 3, "traceparent": f"00-{HOST_TRACE}-{HOST_SPAN}-01"}
    with telemetry.respond_span(meta, None, "gpt-4.1"):
        pass
    (respond,) = spans.get_finished_spans()
    assert _ids(respond)[0] == int(HOST_TRACE, 16)
    assert respond.parent is not None and respond.parent.span_id == int(HOST_SPAN, 16) and respond.parent.is_remote
    with telemetry.respond_span({"traceparent": "00-garbage"}, None, None):  # a bad one starts a new trace
        pass
    assert spans.get_finished_spans()[-1].parent is None


async def test_failures_are_marked_with_their_error_type(
    spans: InMemorySpanExporter, standin: StandIn, tmp_path: Path
) -> None:
    settings = settings_for(standin.base_url, tmp_path)
    standin.faults = Faults(call_unknown_tool="delete_everything")
    await _respond(settings, prompt="Calculate 1 / 0", tools=["math_calculator"])
    tools = {
        str((t.attributes or {})["gen_ai.tool.name"]): t for t in _named(spans.get_finished_spans(), "execute_tool ")
    }
    assert (tools["math_calculator"].attributes or {})["error.type"] == "tool_error"
    assert (tools["delete_everything"].attributes or {})["error.type"] == "unknown_tool"
    assert all(t.status.status_code.name == "ERROR" and not t.status.description for t in tools.values())

    spans.clear()
    standin.faults = Faults(status=401)
    out = await _respond(settings, prompt="hello")
    assert out["status"] == "failed"
    recorded = spans.get_finished_spans()
    (turn,) = _named(recorded, "chat ")
    (respond,) = _named(recorded, "invoke_agent ")
    assert (turn.attributes or {})["error.type"] == "401" and turn.status.status_code.name == "ERROR"
    assert (respond.attributes or {})["error.type"] == "failed" and (respond.attributes or {})[
        "key4u.status"
    ] == "failed"
    assert not turn.status.description and not respond.status.description  # the gateway's message is content


# -- the wire: a real server process, a real OTLP/HTTP receiver ---------------------------------------------


class _Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP collector on a free loopback port: it decodes each ``POST /v1/traces`` and keeps it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.bodies: list[bytes] = []
        self.requests: list[Any] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _OtlpHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
        receiver = cast(_Receiver, self.server)
        receiver.bodies.append(body)
        receiver.requests.append(ExportTraceServiceRequest.FromString(body))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    pytest.importorskip("opentelemetry.proto", reason="the [otel] extra is not installed")
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_a_real_server_sends_its_spans_over_otlp_in_the_hosts_trace(
    receiver: _Receiver, standin: StandIn, tmp_path: Path
) -> None:
    """The installed command, OTEL_EXPORTER_OTLP_ENDPOINT set, and a host that sends raw JSON-RPC with a
    ``traceparent`` in ``_meta``: the spans arrive, decoded from OTLP/HTTP protobuf, as one trace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KEY4U_", "OPENAI_"))}
    env |= {
        "KEY4U_API_KEY": FAKE_KEY,
        "KEY4U_BASE_URL": standin.base_url,
        "KEY4U_DB_PATH": str(tmp_path / "db.sqlite3"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "key4u-under-test",
    }
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "key4u_respond",
            "arguments": {"prompt": KEY4U_PROMPT},
            "_meta": {"traceparent": f"00-{HOST_TRACE}-{HOST_SPAN}-01"},
        },
    }
    session = raw_session(INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, call)
    errlog = tmp_path / "err.txt"
    # When the host goes away, the server flushes its spans before it exits.
    messages = await stdio_exchange(
        session, env, errlog, until=lambda got: any(m.get("id") == 2 for m in got), timeout=60
    )
    answer = next(m for m in messages if m.get("id") == 2)
    assert answer["result"]["structuredContent"]["status"] == "completed", answer

    assert receiver.requests, errlog.read_text()
    resource_spans = [rs for request in receiver.requests for rs in request.resource_spans]
    services = {
        a.value.string_value for rs in resource_spans for a in rs.resource.attributes if a.key == "service.name"
    }
    assert services == {"key4u-under-test"}
    wire = [span for rs in resource_spans for ss in rs.scope_spans for span in ss.spans]
    names = sorted(s.name for s in wire)
    assert names.count("chat gpt-4.1") == 2 and names.count("invoke_agent key4u_respond") == 1
    assert sorted(n for n in names if n.startswith("execute_tool ")) == sorted(f"execute_tool {t}" for t in LOCAL_TOOLS)
    assert {s.trace_id.hex() for s in wire if not s.name.startswith(("initialize", "notifications"))} == {HOST_TRACE}
    by_name = {s.name: s for s in wire}
    sdk, respond = by_name["tools/call key4u_respond"], by_name["invoke_agent key4u_respond"]
    assert sdk.parent_span_id.hex() == HOST_SPAN  # the host's span, from _meta
    assert respond.parent_span_id == sdk.span_id
    turn = by_name["chat gpt-4.1"]
    attributes = {a.key: a.value for a in turn.attributes}
    assert attributes["gen_ai.usage.input_tokens"].int_value > 0
    assert attributes["gen_ai.provider.name"].string_value == "openai"
    everything = b"".join(receiver.bodies)
    assert FAKE_KEY.encode() not in everything
    assert not [c for c in CONTENT if c.encode() in everything]
    assert FAKE_KEY not in errlog.read_text()
