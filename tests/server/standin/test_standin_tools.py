"""Every tool shape a client may send to the stand-in's ``/v1/responses``: function tools grouped in a
``namespace`` (how the Codex CLI sends an MCP server's tools), built-in tools, and unknown types;
checked with the official openai package and raw HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseFunctionToolCall

from server.cli.demo import KEY4U_PROMPT
from server.standin import LABEL, Faults, StandIn
from tests.server.standin.test_standin import KEY4U_TOOLS

NAMESPACE = "mcp__key4u"
#: The Key4U tools as the Codex CLI offers an MCP server's tools: one namespace, flat functions inside.
CODEX_TOOLS: list[Any] = [
    {
        "type": "namespace",
        "name": NAMESPACE,
        "description": "Tools of the MCP server 'key4u'.",
        "tools": [{**tool, "strict": False} for tool in KEY4U_TOOLS],
    }
]
KEY4U_CALLS = {
    "random_generator": {"min": 1, "max": 100, "count": 3},
    "system_info": {},
    "math_calculator": {"a": 123.5, "b": 456.7, "operation": "add"},
    "current_time": {},
}
#: Built-in (and custom) tools, each in a shape the real endpoint accepts; none is ever called.
BUILTIN_TOOLS: list[Any] = [
    {"type": "web_search"},
    {"type": "web_search_preview"},
    {"type": "file_search", "vector_store_ids": ["vs_standin"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "image_generation"},
    {"type": "computer_use_preview", "display_width": 1024, "display_height": 768, "environment": "linux"},
    {"type": "mcp", "server_label": "key4u", "server_url": "https://mcp.example.invalid/mcp"},
    {"type": "local_shell"},
    {"type": "shell"},
    {"type": "apply_patch"},
    {"type": "custom", "name": "random_generator", "description": "Generate random numbers, free-form."},
]
#: A prompt naming every built-in tool above (and the custom tool's name).
BUILTIN_PROMPT = (
    "Search the web (web search preview too), search files, run the code interpreter, do image generation, "
    "use the computer, call the mcp server, open a local shell, apply a patch, and generate random numbers."
)


@pytest.fixture
def api(standin: StandIn) -> Iterator[openai.OpenAI]:
    """The official client on the stand-in, closed after the test."""
    with openai.OpenAI(base_url=standin.base_url, api_key="x", max_retries=0) as sdk:
        yield sdk


def post(upstream: StandIn, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{upstream.base_url}/responses", json=body, headers={"Authorization": "Bearer k"}, timeout=10)


def function_calls(output: list[Any]) -> list[ResponseFunctionToolCall]:
    return [item for item in output if isinstance(item, ResponseFunctionToolCall)]


# --- namespaces ----------------------------------------------------------------------------------


def test_openai_codex_namespace_gets_four_parallel_calls_carrying_the_namespace(api: openai.OpenAI) -> None:
    response = api.responses.create(model="gpt-4.1", input=KEY4U_PROMPT, tools=CODEX_TOOLS)
    calls = function_calls(response.output)
    assert len(calls) == len(response.output) == 4
    assert {call.name: json.loads(call.arguments) for call in calls} == KEY4U_CALLS
    assert all(call.namespace == NAMESPACE for call in calls)
    assert all(call.call_id.startswith("call_") and (call.id or "").startswith("fc_") for call in calls)
    assert [tool.type for tool in response.tools] == ["namespace"]  # echoed as sent


def test_openai_replay_of_namespaced_calls_with_outputs_gives_the_final_answer(api: openai.OpenAI) -> None:
    first = api.responses.create(model="gpt-4.1", input=KEY4U_PROMPT, tools=CODEX_TOOLS, store=False)
    replay: list[Any] = [{"role": "user", "content": KEY4U_PROMPT}]
    for call in function_calls(first.output):
        replay.append(call.model_dump(exclude_none=True))
        replay.append({"type": "function_call_output", "call_id": call.call_id, "output": f"result of {call.name}"})
    assert all(item.get("namespace") == NAMESPACE for item in replay if item.get("type") == "function_call")
    final = api.responses.create(model="gpt-4.1", input=replay, tools=CODEX_TOOLS, store=False)
    assert not function_calls(final.output)
    assert final.output_text.startswith(LABEL) and "4 tool call(s)" in final.output_text
    for name in KEY4U_CALLS:
        assert f"- {name}: result of {name}" in final.output_text


def test_openai_stream_of_namespaced_calls_names_the_namespace_in_every_item(api: openai.OpenAI) -> None:
    added: list[Any] = []
    with api.responses.stream(model="gpt-4.1", input=KEY4U_PROMPT, tools=CODEX_TOOLS) as stream:
        for event in stream:
            if event.type == "response.output_item.added":
                added.append(event.item)
        final = stream.get_final_response()
    assert len(added) == 4 and all(getattr(item, "namespace", None) == NAMESPACE for item in added)
    assert [call.namespace for call in function_calls(final.output)] == [NAMESPACE] * 4


def test_previous_response_id_continues_namespaced_calls(api: openai.OpenAI) -> None:
    first = api.responses.create(model="gpt-4.1", input="Calculate 1 + 2", tools=CODEX_TOOLS)
    (call,) = function_calls(first.output)
    assert (call.name, call.namespace) == ("math_calculator", NAMESPACE)
    second = api.responses.create(
        model="gpt-4.1",
        previous_response_id=first.id,
        tools=CODEX_TOOLS,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "3"}],
    )
    assert "math_calculator: 3" in second.output_text and not function_calls(second.output)


def test_raw_http_namespace_round_trip(standin: StandIn) -> None:
    first = post(standin, {"model": "gpt-4.1", "input": KEY4U_PROMPT, "tools": CODEX_TOOLS, "store": False})
    assert first.status_code == 200
    output: list[dict[str, Any]] = first.json()["output"]
    assert [item["type"] for item in output] == ["function_call"] * 4
    assert {item["name"]: json.loads(item["arguments"]) for item in output} == KEY4U_CALLS
    assert {item["namespace"] for item in output} == {NAMESPACE}
    replay: list[Any] = [{"role": "user", "content": KEY4U_PROMPT}, *output]
    replay += [{"type": "function_call_output", "call_id": item["call_id"], "output": "ok"} for item in output]
    final = post(standin, {"model": "gpt-4.1", "input": replay, "tools": CODEX_TOOLS, "store": False})
    assert final.status_code == 200
    (message,) = final.json()["output"]
    assert message["type"] == "message" and message["content"][0]["text"].startswith(LABEL)
    # A call without its output is refused as usual, namespace or not.
    lone = post(standin, {"model": "gpt-4.1", "input": replay[:2], "tools": CODEX_TOOLS})
    assert lone.status_code == 400 and "No tool output found" in lone.json()["error"]["message"]


def test_the_same_name_in_two_namespaces_and_at_the_top_level_are_three_tools(standin: StandIn) -> None:
    clock: dict[str, Any] = {"type": "function", "name": "current_time", "parameters": {"type": "object"}}
    tools: list[Any] = [
        clock,
        {"type": "namespace", "name": "mcp__a", "description": "a", "tools": [clock]},
        {"type": "namespace", "name": "mcp__b", "description": "b", "tools": [clock]},
    ]
    first = post(standin, {"model": "gpt-4.1", "input": "What is the current time?", "tools": tools})
    output: list[dict[str, Any]] = first.json()["output"]
    assert [(item["name"], item.get("namespace")) for item in output] == [
        ("current_time", None),
        ("current_time", "mcp__a"),
        ("current_time", "mcp__b"),
    ]
    assert "namespace" not in output[0]  # a top-level function's call has no namespace at all
    # With the output of only one of them, the other two are still wanted; with all three, the answer.
    replay: list[Any] = [{"role": "user", "content": "What is the current time?"}, output[1]]
    replay.append({"type": "function_call_output", "call_id": output[1]["call_id"], "output": "noon"})
    second = post(standin, {"model": "gpt-4.1", "input": replay, "tools": tools}).json()["output"]
    assert [(item["name"], item.get("namespace")) for item in second] == [
        ("current_time", None),
        ("current_time", "mcp__b"),
    ]


def test_the_tool_call_loop_fault_calls_a_namespaced_function_with_its_namespace(standin: StandIn) -> None:
    standin.faults = Faults(tool_call_loop=True)
    output = post(standin, {"model": "gpt-4.1", "input": "hi", "tools": CODEX_TOOLS}).json()["output"]
    assert [(item["name"], item["namespace"]) for item in output] == [("random_generator", NAMESPACE)]


# --- built-in tools ------------------------------------------------------------------------------


def test_openai_built_in_tools_are_accepted_and_never_called(api: openai.OpenAI) -> None:
    response = api.responses.create(model="gpt-4.1", input=BUILTIN_PROMPT, tools=BUILTIN_TOOLS)
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text.startswith(LABEL)
    assert len(response.tools) == len(BUILTIN_TOOLS)


@pytest.mark.parametrize("tool", BUILTIN_TOOLS, ids=lambda tool: str(tool["type"]))
def test_each_built_in_tool_alongside_the_key4u_functions_leaves_just_the_four_calls(
    standin: StandIn, tool: dict[str, Any]
) -> None:
    body = {"model": "gpt-4.1", "input": f"{KEY4U_PROMPT}\n{BUILTIN_PROMPT}", "tools": [tool, *CODEX_TOOLS]}
    response = post(standin, body)
    assert response.status_code == 200, response.text
    output: list[dict[str, Any]] = response.json()["output"]
    assert [item["type"] for item in output] == ["function_call"] * 4
    assert {item["name"] for item in output} == set(KEY4U_CALLS)
    assert {item["namespace"] for item in output} == {NAMESPACE}


def test_a_custom_tool_inside_a_namespace_is_accepted_and_never_called(standin: StandIn) -> None:
    tools: list[Any] = [
        {
            "type": "namespace",
            "name": NAMESPACE,
            "description": "d",
            "tools": [{"type": "custom", "name": "random_generator", "description": "free-form"}],
        }
    ]
    response = post(standin, {"model": "gpt-4.1", "input": KEY4U_PROMPT, "tools": tools})
    assert response.status_code == 200
    assert [item["type"] for item in response.json()["output"]] == ["message"]


# --- refusals ------------------------------------------------------------------------------------


def test_openai_an_unknown_tool_type_is_a_400_naming_the_supported_values(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.responses.create(model="gpt-4.1", input="hi", tools=[{"type": "xyz"}])  # type: ignore[list-item]
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["message"].startswith("Invalid value: 'xyz'. Supported values are: 'function', ")
    for kind in ("namespace", "web_search", "file_search", "mcp", "custom", "local_shell"):
        assert f"'{kind}'" in body["message"]
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", "tools[0].type", "invalid_value")


@pytest.mark.parametrize(
    ("tools", "param", "message"),
    [
        ([{"type": "xyz"}], "tools[0].type", "Invalid value: 'xyz'. Supported values are: 'function', "),
        ([{"name": "f"}], "tools[0].type", "Missing required parameter: 'tools[0].type'."),
        (
            [{**CODEX_TOOLS[0], "tools": [*KEY4U_TOOLS, {"type": "web_search"}]}],
            "tools[0].tools[4].type",
            "Invalid value: 'web_search'. Supported values are: 'function' and 'custom'.",
        ),
        (
            [{"type": "namespace", "name": "mcp.key4u", "description": "d", "tools": []}],
            "tools[0].name",
            "does not match pattern",
        ),
        ([{"type": "namespace", "name": "n", "tools": []}], "tools[0].description", "Missing required parameter"),
        ([{"type": "namespace", "name": "n", "description": "d"}], "tools[0].tools", "Missing required parameter"),
        (
            [{"type": "namespace", "name": "n", "description": "d", "tools": {}}],
            "tools[0].tools",
            "expected an array",
        ),
        (
            [{"type": "namespace", "name": "n", "description": "d", "tools": [{"type": "function", "name": "a b"}]}],
            "tools[0].tools[0].name",
            "does not match pattern",
        ),
        (
            [
                {
                    "type": "namespace",
                    "name": "n",
                    "description": "d",
                    "tools": [{"type": "function", "function": {"name": "f"}}],
                }
            ],
            "tools[0].tools[0].name",
            "nested 'function'",
        ),
        (
            [
                {
                    "type": "namespace",
                    "name": "n",
                    "description": "d",
                    "tools": [
                        {
                            "type": "function",
                            "name": "f",
                            "strict": True,
                            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
                        }
                    ],
                }
            ],
            "tools[0].tools[0].parameters",
            "'additionalProperties' is required",
        ),
        (
            [{"type": "namespace", "name": "n", "description": "d", "tools": [{"type": "custom"}]}],
            "tools[0].tools[0].name",
            "Missing required parameter",
        ),
        ([{"type": "file_search"}], "tools[0].vector_store_ids", "Missing required parameter"),
        ([{"type": "mcp"}], "tools[0].server_label", "Missing required parameter"),
        ([{"type": "custom", "name": "has space"}], "tools[0].name", "does not match pattern"),
    ],
)
def test_raw_http_malformed_tools_are_refused_with_the_real_error_envelope(
    standin: StandIn, tools: list[Any], param: str, message: str
) -> None:
    response = post(standin, {"model": "gpt-4.1", "input": "hi", "tools": tools})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and message in error["message"]


def test_a_replayed_call_with_a_namespace_that_is_not_a_string_is_refused(standin: StandIn) -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}", "namespace": 7}
    replay = [
        {"role": "user", "content": "hi"},
        call,
        {"type": "function_call_output", "call_id": "call_1", "output": ""},
    ]
    response = post(standin, {"model": "gpt-4.1", "input": replay})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input[1].namespace"
