"""The Chat Completions adapter over ``httpx.MockTransport``: what it sends (checked with the openai
package's own request types), how it assembles streams, and how it reports cut or malformed replies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openai.types.chat import completion_create_params
from pydantic import TypeAdapter

from server import errors
from server.upstream.chat import ChatClient, ChatModel
from server.upstream.gateway import RetryPolicy
from server.upstream.model import FunctionCall, FunctionOutput, Message, ModelRequest, StreamEvent
from server.upstream.translation import to_function_tool
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.anyio

CALCULATOR = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}, "note": {"type": "string"}},
    "required": ["a", "b"],
}
SPEC = to_function_tool("math_calculator", "Add numbers", CALCULATOR, "math_calculator")
OPENAI_PARAMS = TypeAdapter(completion_create_params.CompletionCreateParamsStreaming)

Handler = Callable[[httpx.Request], httpx.Response]


def model(handler: Handler, *, stream: bool = True) -> ChatModel:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = ChatClient(
        http, base_url="https://gw.test/v1", api_key=FAKE_KEY, stream=stream, retry=RetryPolicy(max_retries=0)
    )
    return ChatModel(client)


def sse(*chunks: dict[str, Any] | str) -> Handler:
    body = "".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return handler


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "claude-x", "choices": [choice], **extra}


def forced(value: Any) -> Any:
    """Pydantic validates ``Iterable`` fields lazily: walk them so every nested part is checked."""
    if isinstance(value, dict):
        return {k: forced(v) for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return [forced(v) for v in value]


def history() -> list[Any]:
    return [
        Message(role="user", text="add 1 and 2, twice"),
        Message(role="assistant", text="Calling the calculator."),
        FunctionCall(call_id="c1", name="math_calculator", arguments='{"a": 1, "b": 2}'),
        FunctionCall(call_id="c2", name="math_calculator", arguments='{"a": 1, "b": 2}'),
        FunctionOutput(call_id="c1", output="3"),
        FunctionOutput(call_id="c2", output="3"),
    ]


@pytest.mark.parametrize("name", ["gpt-4.1", "claude-sonnet-4-5"])
def test_the_request_is_what_the_openai_package_accepts(name: str) -> None:
    request = ModelRequest(
        model=name,
        items=history(),
        instructions="be brief",
        tools=[SPEC],
        tool_choice="math_calculator",
        reasoning_effort="low",
        response_format={"type": "object", "properties": {"x": {"type": "number"}}},
        max_output_tokens=64,
    )
    body, notes = model(sse()).build(request)
    assert notes == []
    forced(OPENAI_PARAMS.validate_python({**body, "stream": True, "stream_options": {"include_usage": True}}))
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool"]
    assistant = body["messages"][2]
    assert assistant["content"] == "Calling the calculator." and [c["id"] for c in assistant["tool_calls"]] == [
        "c1",
        "c2",
    ]
    assert [m["tool_call_id"] for m in body["messages"][3:]] == ["c1", "c2"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "math_calculator"}}
    function = body["tools"][0]["function"]
    if name.startswith("gpt"):
        # OpenAI models get the strict form: every property required, optional ones nullable.
        assert function["strict"] is True and set(function["parameters"]["required"]) == {"a", "b", "note"}
        assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    else:
        assert "strict" not in function and function["parameters"]["required"] == ["a", "b"]
        assert body["max_tokens"] == 64 and "max_completion_tokens" not in body


def test_options_this_api_lacks_are_named_in_notes() -> None:
    body, notes = model(sse()).build(
        ModelRequest(model="deepseek-chat", items=history()[:1], web_search=True, metadata={"k": "v"})
    )
    assert "tools" not in body and "metadata" not in body
    assert any("web_search" in n for n in notes) and any("metadata" in n for n in notes)


async def test_a_stream_is_assembled_by_index_with_usage() -> None:
    heard: list[StreamEvent] = []

    async def on_event(event: StreamEvent) -> None:
        heard.append(event)

    handler = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk(
            {"tool_calls": [{"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": ""}}]}
        ),
        chunk(
            {"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}]}
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk(finish="tool_calls"),
        {
            "id": "chatcmpl-1",
            "choices": [],
            "usage": {
                "prompt_tokens": 11,
                "completion_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
        },
        "[DONE]",
    )
    response = await model(handler).respond(ModelRequest(model="claude-x", items=history()[:1]), on_event)
    calls = response.function_calls
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [("a", "f", '{"a": 1}'), ("b", "g", "{}")]
    assert response.status == "completed" and response.api == "chat" and response.model == "claude-x"
    assert response.usage is not None and (response.usage.input_tokens, response.usage.cached_tokens) == (11, 4)
    assert response.usage.reasoning_tokens == 2
    assert [e.name for e in heard if e.kind == "function_call"] == ["g", "f"]


async def test_a_stream_without_finish_reason_is_cut_not_an_answer() -> None:
    handler = sse(chunk({"role": "assistant", "content": "The answer is"}), "[DONE]")
    with pytest.raises(errors.MalformedResponseError, match="without a finish_reason") as caught:
        await model(handler).respond(ModelRequest(model="m", items=history()[:1]))
    assert caught.value.stream_started  # billed: never retried


async def test_length_is_incomplete_and_an_error_chunk_is_a_stream_error() -> None:
    cut = sse(chunk({"content": "partial"}), chunk(finish="length"))
    response = await model(cut).respond(ModelRequest(model="m", items=history()[:1]))
    assert response.status == "incomplete" and response.incomplete_reason == "max_output_tokens"
    assert response.text == "partial"
    failing = sse(chunk({"content": "x"}), {"error": {"message": f"upstream broke for {FAKE_KEY}", "code": "boom"}})
    with pytest.raises(errors.StreamError) as caught:
        await model(failing).respond(ModelRequest(model="m", items=history()[:1]))
    assert "boom" in str(caught.value) and FAKE_KEY not in str(caught.value)


async def test_malformed_replies_are_clear_errors() -> None:
    def reply(body: Any) -> Handler:
        return lambda request: httpx.Response(200, json=body)

    request = ModelRequest(model="m", items=history()[:1])
    with pytest.raises(errors.MalformedResponseError, match="no choices"):
        await model(reply({"id": "x", "choices": []}), stream=False).respond(request)
    nameless = {"choices": [{"message": {"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}}]}
    with pytest.raises(errors.MalformedResponseError, match="no function name"):
        await model(reply(nameless), stream=False).respond(request)
    with pytest.raises(errors.MalformedResponseError, match="not JSON"):
        await model(lambda r: httpx.Response(200, text="{oops"), stream=False).respond(request)
    with pytest.raises(errors.QuotaExceededError):
        await model(reply({"error": {"message": "余额不足", "code": "insufficient_user_quota"}}), stream=False).respond(
            request
        )


async def test_a_call_without_an_id_gets_one_and_arguments_may_be_an_object() -> None:
    body = {
        "choices": [
            {
                "message": {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
                "finish_reason": "tool_calls",
            }
        ]
    }
    response = await model(lambda r: httpx.Response(200, json=body), stream=False).respond(
        ModelRequest(model="m", items=history()[:1])
    )
    [call] = response.function_calls
    assert call.call_id.startswith("call_") and json.loads(call.arguments) == {"a": 1}
    assert any("without an id" in n for n in response.notes)


async def test_http_errors_are_mapped_and_masked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {FAKE_KEY}"
        assert request.url.path == "/v1/chat/completions"
        return httpx.Response(401, json={"error": {"message": f"bad key {FAKE_KEY}", "code": "invalid_api_key"}})

    with pytest.raises(errors.AuthenticationError) as caught:
        await model(handler).respond(ModelRequest(model="m", items=history()[:1]))
    assert FAKE_KEY not in str(caught.value)
