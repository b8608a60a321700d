"""The stand-in speaks the real wire format: checked with the official openai package and raw HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseFunctionToolCall

from server.cli.demo import KEY4U_PROMPT
from server.standin import LABEL, Faults, StandIn

KEY4U_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "random_generator",
        "description": "Generate random numbers",
        "parameters": {
            "type": "object",
            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}, "count": {"type": "integer"}},
        },
    },
    {
        "type": "function",
        "name": "system_info",
        "description": "System information",
        "parameters": {"type": "object", "properties": {}},
    },
    {
        "type": "function",
        "name": "math_calculator",
        "description": "Math",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}, "operation": {"type": "string"}},
            "required": ["operation", "a", "b"],
        },
    },
    {
        "type": "function",
        "name": "current_time",
        "description": "Current time",
        "parameters": {"type": "object", "properties": {}},
    },
]


_OPEN: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close every client a test opened: a pooled socket left to the GC warns (an error here)."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def client(upstream: StandIn, key: str = "any-key") -> openai.OpenAI:
    api = openai.OpenAI(base_url=upstream.base_url, api_key=key, max_retries=0)
    _OPEN.append(api)
    return api


def test_openai_create_gets_the_key4u_example_calls(standin: StandIn) -> None:
    response = client(standin).responses.create(model="gpt-4.1", input=KEY4U_PROMPT, tools=KEY4U_TOOLS)  # type: ignore[arg-type]
    calls = {item.name: json.loads(item.arguments) for item in response.output if item.type == "function_call"}
    assert calls == {
        "random_generator": {"min": 1, "max": 100, "count": 3},
        "system_info": {},
        "math_calculator": {"a": 123.5, "b": 456.7, "operation": "add"},
        "current_time": {},
    }
    assert response.status == "completed" and response.usage is not None and response.usage.input_tokens > 0
    assert all(item.call_id.startswith("call_") and item.id.startswith("fc_") for item in response.output)  # type: ignore[union-attr]


def test_openai_stream_then_final_answer_built_from_outputs(standin: StandIn) -> None:
    api = client(standin)
    first = api.responses.create(model="gpt-4.1", input=KEY4U_PROMPT, tools=KEY4U_TOOLS, store=False)  # type: ignore[arg-type]
    replay: list[Any] = [{"role": "user", "content": KEY4U_PROMPT}]
    for item in first.output:
        replay.append(item.model_dump(exclude_none=True))
        replay.append({"type": "function_call_output", "call_id": item.call_id, "output": f"result of {item.name}"})  # type: ignore[union-attr]
    kinds: list[str] = []
    with api.responses.stream(model="gpt-4.1", input=replay, tools=KEY4U_TOOLS) as stream:  # type: ignore[arg-type]
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert final.output_text.startswith(LABEL)
    assert "result of math_calculator" in final.output_text


def test_openai_stream_of_function_calls_carries_argument_deltas(standin: StandIn) -> None:
    with client(standin).responses.stream(model="gpt-4.1", input=KEY4U_PROMPT, tools=KEY4U_TOOLS) as stream:  # type: ignore[arg-type]
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds.count("response.output_item.added") == 4
    assert kinds.count("response.function_call_arguments.done") == 4
    assert len([o for o in final.output if o.type == "function_call"]) == 4


@pytest.mark.parametrize(
    ("input_items", "message"),
    [
        (
            [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "call_X", "output": "1"}],
            "No tool call found for function call output with call_id call_X.",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "call_Y", "name": "f", "arguments": "{}"},
            ],
            "No tool output found for function call call_Y.",
        ),
        (
            [{"type": "function_call", "id": "call_Z", "call_id": "call_Z", "name": "f", "arguments": "{}"}],
            "Expected an ID that begins with 'fc'",
        ),
    ],
)
def test_unpaired_calls_are_refused_with_the_real_error_envelope(
    standin: StandIn, input_items: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(standin).responses.create(model="gpt-4.1", input=input_items)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict) and message in body["message"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        ({"type": "function", "function": {"name": "f"}}, "nested 'function'"),
        ({"type": "function", "name": "has space"}, "does not match pattern"),
        ({"type": "function", "name": "f", "parameters": {"type": "string"}}, 'type: "object"'),
        (
            {
                "type": "function",
                "name": "f",
                "strict": True,
                "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
            },
            "'additionalProperties' is required",
        ),
        (
            {
                "type": "function",
                "name": "f",
                "strict": True,
                "parameters": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"x": {"type": "string"}},
                },
            },
            "Missing 'x'",
        ),
    ],
)
def test_malformed_tools_and_invalid_strict_schemas_are_refused(
    standin: StandIn, tool: dict[str, Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=message):
        client(standin).responses.create(model="gpt-4.1", input="hi", tools=[tool])  # type: ignore[list-item]


def test_a_key_is_required_and_a_specific_key_can_be_enforced() -> None:
    with StandIn(api_key="the-right-key") as upstream:
        with pytest.raises(openai.AuthenticationError):
            client(upstream, "the-wrong-key").responses.create(model="gpt-4.1", input="hi")
        assert client(upstream, "the-right-key").models.list().data[0].id == "gpt-4.1"
        response = httpx.post(f"{upstream.base_url}/responses", json={"model": "gpt-4.1", "input": "hi"})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_previous_response_id_continues_a_stored_response(standin: StandIn) -> None:
    api = client(standin)
    first = api.responses.create(model="gpt-4.1", input="Calculate 1 + 2", tools=KEY4U_TOOLS)  # type: ignore[arg-type]
    (call,) = first.output
    assert isinstance(call, ResponseFunctionToolCall)
    second = api.responses.create(
        model="gpt-4.1",
        previous_response_id=first.id,
        tools=KEY4U_TOOLS,  # type: ignore[arg-type]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "3"}],
    )
    assert "math_calculator: 3" in second.output_text
    with pytest.raises(openai.BadRequestError, match="not found"):
        api.responses.create(model="gpt-4.1", previous_response_id="resp_unknown", input="hi")


def test_without_matching_tools_it_says_what_it_is(standin: StandIn) -> None:
    response = client(standin).responses.create(model="gpt-4.1", input="Tell me a joke")
    assert response.output_text.startswith(LABEL) and "Tell me a joke" in response.output_text


def _raw_stream(upstream: StandIn) -> str:
    body = {"model": "gpt-4.1", "input": "hello", "stream": True}
    return httpx.post(f"{upstream.base_url}/responses", json=body, headers={"Authorization": "Bearer k"}).text


def test_fault_switches_shape_the_raw_stream(standin: StandIn) -> None:
    plain = _raw_stream(standin)
    assert plain.startswith("event: response.created\ndata: ") and "[DONE]" not in plain and ": PING" not in plain
    standin.faults = Faults(ping=True, done_marker=True, no_event_lines=True, model_alias="renamed")
    quirky = _raw_stream(standin)
    assert ": PING" in quirky and quirky.rstrip().endswith("data: [DONE]") and "event:" not in quirky
    assert '"model": "renamed"' in quirky
    standin.faults = Faults(cut_stream_after=2)
    assert "response.completed" not in _raw_stream(standin)
    standin.faults = Faults(error_event_after=1)
    assert "event: error" in _raw_stream(standin)


def test_latency_status_and_nth_request_faults(standin: StandIn) -> None:
    standin.faults = Faults(latency=0.3)
    started = time.monotonic()
    client(standin).responses.create(model="gpt-4.1", input="hi")
    assert time.monotonic() - started >= 0.3
    standin.faults = Faults(status=429, retry_after="12", fail_requests={2})
    api = client(standin)
    with pytest.raises(openai.RateLimitError) as caught:
        api.responses.create(model="gpt-4.1", input="hi")  # the 2nd request
    assert caught.value.response.headers["retry-after"] == "12"
    api.responses.create(model="gpt-4.1", input="hi")  # the 3rd is fine
