"""A hostile gateway, byte by byte, and hostile schemas: every reply is bounded, cleaned and turned into a
clear error or a usable response, never a crash, a hang or a leak."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest

from server import errors
from server.upstream.chat import ChatClient, ChatModel
from server.upstream.gateway import ReplyLimits, RetryPolicy
from server.upstream.model import Message, ModelRequest
from server.upstream.responses import ResponsesClient, ResponsesModel
from server.upstream.translation import ArgumentError, UnsupportedToolError, parse_arguments, to_function_tool
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.anyio

ASK = ModelRequest(model="m", items=[Message(role="user", text="hi")])
Handler = Callable[[httpx.Request], httpx.Response]


def http_for(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def responses(handler: Handler | httpx.AsyncClient, limits: ReplyLimits | None = None, **kw: Any) -> ResponsesModel:
    http = handler if isinstance(handler, httpx.AsyncClient) else http_for(handler)
    client = ResponsesClient(
        http, base_url="https://gw.test/v1", api_key=FAKE_KEY, retry=RetryPolicy(max_retries=0), limits=limits, **kw
    )
    return ResponsesModel(client)


def chat(handler: Handler | httpx.AsyncClient, limits: ReplyLimits | None = None, **kw: Any) -> ChatModel:
    http = handler if isinstance(handler, httpx.AsyncClient) else http_for(handler)
    client = ChatClient(
        http, base_url="https://gw.test/v1", api_key=FAKE_KEY, retry=RetryPolicy(max_retries=0), limits=limits, **kw
    )
    return ChatModel(client)


def raw_json(text: str) -> Handler:
    return lambda request: httpx.Response(200, content=text.encode(), headers={"content-type": "application/json"})


def call_item(call_id: str, arguments: str = "{}") -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": "f", "arguments": arguments}


async def test_lone_surrogates_and_an_echoed_key_are_cleaned_everywhere() -> None:
    # Written by hand: json.dumps would escape the key as it is; the surrogate must arrive as \ud800.
    text = f'"answer \\ud800 with {FAKE_KEY}"'
    body = (
        '{"id": "r", "status": "completed", "model": "' + FAKE_KEY + '", "output": ['
        '{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": ' + text + "}]},"
        '{"type": "function_call", "call_id": "c\\udfff", "name": "f", "arguments": "{\\"k\\": \\"\\ud800\\"}"}]}'
    )
    response = await responses(raw_json(body), stream=False).respond(ASK)
    dumped = json.dumps([i.model_dump() for i in response.output]) + str(response.model)
    assert "\ufffd" in response.text and FAKE_KEY not in dumped and FAKE_KEY not in response.text
    for item in response.output:
        item.model_dump_json()  # writable as UTF-8: no lone surrogate is left
    chat_body = (
        '{"choices": [{"message": {"role": "assistant", "content": "x\\udc00 ' + FAKE_KEY + '"}, "finish_reason": '
        '"stop"}], "model": "m\\ud800"}'
    )
    reply = await chat(raw_json(chat_body), stream=False).respond(ASK)
    assert FAKE_KEY not in reply.text and "\ufffd" in reply.text and reply.model == "m\ufffd"


async def test_a_key_straddling_the_error_preview_cut_is_masked() -> None:
    for offset in (470, 480, 490, 499):
        message = "x" * offset + FAKE_KEY + "y" * 100
        handler: Handler = lambda request, m=message: httpx.Response(500, json={"error": {"message": m}})  # noqa: E731
        with pytest.raises(errors.ServerError) as caught:
            await responses(handler, stream=False).respond(ASK)
        shown = str(caught.value)
        assert FAKE_KEY[:12] not in shown and FAKE_KEY[-12:] not in shown, offset


async def test_two_calls_sharing_an_id_are_refused_not_merged() -> None:
    body = json.dumps({"status": "completed", "output": [call_item("same"), call_item("same")]})
    with pytest.raises(errors.MalformedResponseError, match="share the id"):
        await responses(raw_json(body), stream=False).respond(ASK)
    calls = [{"id": "same", "function": {"name": "f", "arguments": "{}"}}] * 2
    chat_body = json.dumps({"choices": [{"message": {"role": "assistant", "tool_calls": calls}}]})
    with pytest.raises(errors.MalformedResponseError, match="share the id"):
        await chat(raw_json(chat_body), stream=False).respond(ASK)


async def test_odd_token_counts_are_read_leniently() -> None:
    usage = {"input_tokens": 12.0, "output_tokens": "7", "input_tokens_details": {"cached_tokens": None}}
    body = json.dumps({"status": "completed", "output": [], "usage": usage})
    response = await responses(raw_json(body), stream=False).respond(ASK)
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)
    weird = json.dumps({"status": "completed", "output": [], "usage": {"input_tokens": [1], "output_tokens": -3}})
    response = await responses(raw_json(weird), stream=False).respond(ASK)
    assert response.usage is not None and response.usage.input_tokens == 0 == response.usage.output_tokens


async def test_json_too_deep_and_an_undecodable_body_are_malformed_replies() -> None:
    with pytest.raises(errors.MalformedResponseError, match="not JSON"):
        await responses(raw_json("[" * 200_000), stream=False).respond(ASK)
    bad_gzip = lambda request: httpx.Response(  # noqa: E731
        200, content=b"not gzip at all", headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    with pytest.raises(errors.MalformedResponseError, match="could not be decoded"):
        await chat(bad_gzip, stream=False).respond(ASK)
    good_gzip = lambda request: httpx.Response(  # noqa: E731
        200,
        content=gzip.compress(
            json.dumps({"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}).encode()
        ),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert (await chat(good_gzip, stream=False).respond(ASK)).text == "ok"


async def test_a_reply_larger_than_the_limit_is_refused() -> None:
    big = json.dumps({"choices": [{"message": {"content": "x" * 400_000}, "finish_reason": "stop"}]})
    with pytest.raises(errors.MalformedResponseError, match="larger than 100000 bytes"):
        await chat(raw_json(big), ReplyLimits(max_bytes=100_000), stream=False).respond(ASK)
    one_line = "data: " + "y" * 400_000  # a single SSE line that never ends
    stream = lambda request: httpx.Response(  # noqa: E731
        200, content=one_line.encode(), headers={"content-type": "text/event-stream"}
    )
    with pytest.raises(errors.MalformedResponseError, match="larger than 100000 bytes"):
        await chat(stream, ReplyLimits(max_bytes=100_000)).respond(ASK)


async def test_many_argument_deltas_assemble_into_one_call() -> None:
    pieces = ['{"k": "', *("ab" for _ in range(20_000)), '"}']
    events = [
        {"type": "response.output_item.added", "output_index": 0, "item": call_item("c1", "")},
        *({"type": "response.function_call_arguments.delta", "output_index": 0, "delta": p} for p in pieces),
        {"type": "response.completed", "response": {"id": "r", "status": "completed", "output": []}},
    ]
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    handler = lambda request: httpx.Response(  # noqa: E731
        200, content=body.encode(), headers={"content-type": "text/event-stream"}
    )
    [call] = (await responses(handler).respond(ASK)).function_calls
    assert json.loads(call.arguments) == {"k": "ab" * 20_000}


class Dripping(BaseHTTPRequestHandler):
    """A gateway that keeps the stream open with comments only, or with an event every 0.2 s, for ever."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        chunk = b": PING\n\n" if "pings" in self.path else b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
        try:
            for _ in range(300):
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            return

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
async def dripping() -> AsyncIterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Dripping)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_keep_alive_comments_count_as_silence_and_a_drip_meets_the_total_bound(dripping: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        client = ChatClient(
            http, base_url=f"{dripping}/pings", api_key=FAKE_KEY, limits=ReplyLimits(silence=1.0, total=30)
        )
        started = time.monotonic()
        with anyio.fail_after(20), pytest.raises(errors.UpstreamTimeout, match="no event for 1 s"):
            await ChatModel(client).respond(ASK)
        assert time.monotonic() - started < 10
        client = ChatClient(http, base_url=f"{dripping}/drip", api_key=FAKE_KEY, limits=ReplyLimits(total=1.5))
        with anyio.fail_after(20), pytest.raises(errors.UpstreamTimeout, match="longer than 1.5 s") as caught:
            await ChatModel(client).respond(ASK)
        assert caught.value.stream_started  # billed: never retried


# --- schemas and arguments from outside -----------------------------------------------------------


def test_a_catastrophic_pattern_is_checked_in_linear_time() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}, "required": ["s"]}
    spec = to_function_tool("f", "", schema, "f")
    started = time.monotonic()
    with pytest.raises(ArgumentError, match="does not match"):
        parse_arguments(spec, json.dumps({"s": "a" * 50_000 + "b"}))
    assert parse_arguments(spec, json.dumps({"s": "aaa"})) == {"s": "aaa"}
    keyed = {"type": "object", "patternProperties": {"^(x+)+$": {"type": "integer"}}, "additionalProperties": False}
    spec = to_function_tool("g", "", keyed, "g")
    with pytest.raises(ArgumentError, match="not allowed"):
        parse_arguments(spec, json.dumps({"x" * 40_000 + "!": 1}))
    assert parse_arguments(spec, json.dumps({"xx": 1})) == {"xx": 1}
    with pytest.raises(ArgumentError, match="is not of type 'integer'"):
        parse_arguments(spec, json.dumps({"xx": "one"}))
    assert time.monotonic() - started < 5  # Python's re would take longer than the age of the universe


def test_lookaround_patterns_re2_lacks_are_left_to_the_tool() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(?=a)a$"}}}
    assert parse_arguments(to_function_tool("f", "", schema, "f"), '{"s": "zzz"}') == {"s": "zzz"}


def test_a_remote_ref_is_never_fetched() -> None:
    hits: list[str] = []

    class Counting(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "integer"}')

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/schema.json"
        schema = {"type": "object", "properties": {"n": {"$ref": url}}}
        spec = to_function_tool("f", "", schema, "f")
        assert parse_arguments(spec, '{"n": "not an integer"}') == {"n": "not an integer"}  # unchecked, not fetched
    finally:
        server.shutdown()
        server.server_close()
    assert hits == []


def test_deep_arguments_and_deep_or_huge_schemas_are_refused_clearly() -> None:
    spec = to_function_tool("f", "", {"type": "object"}, "f")
    with pytest.raises(ArgumentError, match="nest deeper than 64"):
        parse_arguments(spec, '{"a": ' + "[" * 300 + "]" * 300 + "}")
    with pytest.raises(ArgumentError, match="not valid JSON"):
        parse_arguments(spec, '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(UnsupportedToolError, match="nests deeper than 32"):
        to_function_tool("deep", "", deep, "deep")
    huge = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "description": "d" * 100} for i in range(5000)},
    }
    with pytest.raises(UnsupportedToolError, match="at most 262144"):
        to_function_tool("huge", "", huge, "huge")


async def test_a_request_litellm_already_retried_is_not_retried_again() -> None:
    attempts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        headers = {"x-litellm-call-id": "abc"} if len(attempts) < 10 else {}
        return httpx.Response(500, json={"error": {"message": "upstream down"}}, headers=headers)

    client = ChatClient(http_for(handler), base_url="https://gw.test/v1", api_key=FAKE_KEY, stream=False)
    client.gateway.retry = RetryPolicy(max_retries=2, max_wait=0.01, budget=5)
    with pytest.raises(errors.ServerError):
        await ChatModel(client).respond(ASK)
    assert len(attempts) == 1  # LiteLLM retried three times itself: ours would make it nine
    invalid = lambda request: httpx.Response(400, json={"error": {"message": "Invalid model name passed in model=x"}})  # noqa: E731
    with pytest.raises(errors.NotFoundError) as caught:
        await chat(invalid, stream=False).respond(ASK)
    assert "does not offer this model" in str(caught.value)


async def test_a_key_straddling_the_cut_of_a_stream_error_or_a_failed_response_is_masked() -> None:
    message = "x" * 1990 + FAKE_KEY + "y" * 50
    chunk = json.dumps({"error": {"message": message, "code": "boom"}})
    streamed = lambda request: httpx.Response(  # noqa: E731
        200, content=f"data: {chunk}\n\n".encode(), headers={"content-type": "text/event-stream"}
    )
    with pytest.raises(errors.StreamError) as caught:
        await chat(streamed).respond(ASK)
    assert FAKE_KEY[:8] not in str(caught.value) and FAKE_KEY[-8:] not in str(caught.value)
    failed = json.dumps({"status": "failed", "output": [], "error": {"message": message, "code": "server_error"}})
    response = await responses(raw_json(failed), stream=False).respond(ASK)
    assert response.status == "failed" and response.error is not None
    assert FAKE_KEY[:8] not in response.error and FAKE_KEY[-8:] not in response.error
