"""The stand-in's Chat Completions endpoint and gateway personalities, checked with the official
openai package (its ChatCompletion and ChatCompletionChunk types validate every reply) and raw HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from server.cli.demo import KEY4U_PROMPT
from server.standin import LABEL, Faults, StandIn
from tests.server.standin.test_standin import KEY4U_TOOLS

#: The four Key4U tools in the Chat Completions shape (``function`` nested).
CHAT_TOOLS: list[Any] = [
    {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}} for tool in KEY4U_TOOLS
]
KEY4U_CALLS = {
    "random_generator": {"min": 1, "max": 100, "count": 3},
    "system_info": {},
    "math_calculator": {"a": 123.5, "b": 456.7, "operation": "add"},
    "current_time": {},
}
USER: list[Any] = [{"role": "user", "content": KEY4U_PROMPT}]


@pytest.fixture
def api(standin: StandIn) -> Iterator[openai.OpenAI]:
    """The official client on the stand-in, closed after the test (no socket left for the GC to warn about)."""
    with openai.OpenAI(base_url=standin.base_url, api_key="x", max_retries=0) as sdk:
        yield sdk


def post(upstream: StandIn, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{upstream.base_url}{path}", json=body, headers={"Authorization": "Bearer k"}, timeout=10)


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": USER, "tools": CHAT_TOOLS, **extra}


def data_lines(raw: str) -> list[str]:
    return [line[len("data: ") :] for line in raw.splitlines() if line.startswith("data: ")]


def raw_chunks(raw: str) -> list[ChatCompletionChunk]:
    return [ChatCompletionChunk.model_validate(json.loads(d)) for d in data_lines(raw) if d != "[DONE]"]


def answered(first: ChatCompletion) -> list[Any]:
    """The conversation after ``first``'s calls, each answered with ``result of <name>``."""
    message = first.choices[0].message
    calls = message.tool_calls or []
    replies = [
        {"role": "tool", "tool_call_id": c.id, "content": f"result of {c.function.name}"}  # type: ignore[union-attr]
        for c in calls
    ]
    return [*USER, message.model_dump(exclude_none=True), *replies]


# --- replies -----------------------------------------------------------------------------------


def test_the_key4u_prompt_gets_four_parallel_calls_in_one_turn(standin: StandIn, api: openai.OpenAI) -> None:
    reply = api.chat.completions.create(model="gpt-4.1", messages=USER, tools=CHAT_TOOLS)
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    assert {c.function.name: json.loads(c.function.arguments) for c in calls} == KEY4U_CALLS  # type: ignore[union-attr]
    assert (
        choice.finish_reason == "tool_calls" and choice.message.content is None and choice.message.role == "assistant"
    )
    assert all(c.id.startswith("call_") and c.type == "function" for c in calls)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and reply.model == "gpt-4.1"
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    # The raw body validates strictly (not only the SDK's lenient construction), with no tool_calls on a text reply.
    raw = post(standin, "/chat/completions", chat_body()).json()
    assert ChatCompletion.model_validate(raw).choices[0].finish_reason == "tool_calls"
    text = post(standin, "/chat/completions", {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
    assert "tool_calls" not in text.json()["choices"][0]["message"]
    assert ChatCompletion.model_validate(text.json()).choices[0].finish_reason == "stop"


def test_after_four_tool_messages_it_answers_as_the_responses_side_does(standin: StandIn, api: openai.OpenAI) -> None:
    first = api.chat.completions.create(model="gpt-4.1", messages=USER, tools=CHAT_TOOLS)
    final = api.chat.completions.create(model="gpt-4.1", messages=answered(first), tools=CHAT_TOOLS)
    choice = final.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    content = choice.message.content or ""
    assert content.startswith(LABEL) and "Results of 4 tool call(s)" in content
    assert "math_calculator: result of math_calculator" in content
    # The same prompt and outputs through /v1/responses get the very same answer.
    replay: list[Any] = [*USER]
    for call in first.choices[0].message.tool_calls or []:
        name = call.function.name  # type: ignore[union-attr]
        replay.append({"type": "function_call", "call_id": call.id, "name": name, "arguments": "{}"})
        replay.append({"type": "function_call_output", "call_id": call.id, "output": f"result of {name}"})
    via_responses = api.responses.create(model="gpt-4.1", input=replay, tools=KEY4U_TOOLS)  # type: ignore[arg-type]
    assert via_responses.output_text == content


def test_content_may_be_text_parts_and_parallel_false_makes_one_call_per_turn(
    standin: StandIn, api: openai.OpenAI
) -> None:
    parts: list[Any] = [{"role": "user", "content": [{"type": "text", "text": KEY4U_PROMPT}]}]
    reply = api.chat.completions.create(model="gpt-4.1", messages=parts, tools=CHAT_TOOLS, parallel_tool_calls=False)
    assert [c.function.name for c in reply.choices[0].message.tool_calls or []] == ["random_generator"]  # type: ignore[union-attr]
    chosen = api.chat.completions.create(
        model="gpt-4.1",
        messages=USER,
        tools=CHAT_TOOLS,
        tool_choice={"type": "function", "function": {"name": "current_time"}},
    )
    assert [c.function.name for c in chosen.choices[0].message.tool_calls or []] == ["current_time"]  # type: ignore[union-attr]
    none = api.chat.completions.create(model="gpt-4.1", messages=USER, tools=CHAT_TOOLS, tool_choice="none")
    assert none.choices[0].finish_reason == "stop" and (none.choices[0].message.content or "").startswith(LABEL)


def test_response_formats_reasoning_effort_and_token_limits(standin: StandIn, api: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"summary": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["summary", "count"],
        "additionalProperties": False,
    }
    structured = api.chat.completions.create(
        model="gpt-5",
        messages=[{"role": "user", "content": "Summarise"}],
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}},
        reasoning_effort="low",
        max_completion_tokens=500,
    )
    document = json.loads(structured.choices[0].message.content or "")
    assert set(document) == {"summary", "count"} and document["summary"].startswith(LABEL)
    usage = structured.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 8 and usage.completion_tokens > 8
    plain = api.chat.completions.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "Answer in json"}],
        response_format={"type": "json_object"},
        max_tokens=50,
    )
    assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)
    assert plain.usage is not None and plain.usage.completion_tokens_details is not None
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0


# --- request checks ------------------------------------------------------------------------------


def _call(call_id: str, name: str = "system_info") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [_call("call_A"), _call("call_B")]},
                {"role": "tool", "tool_call_id": "call_A", "content": "1"},
                {"role": "user", "content": "and?"},
            ],
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            "'tool_call_id'. The following tool_call_ids did not have response messages: call_B",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [_call("call_A")]},
            ],
            "The following tool_call_ids did not have response messages: call_A",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [_call("call_A")]},
                {"role": "tool", "tool_call_id": "call_X", "content": "1"},
            ],
            "messages with role 'tool' must be a response to a preceeding message with 'tool_calls'",
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_A", "content": "1"}],
            "messages with role 'tool' must be a response to a preceeding message with 'tool_calls'",
        ),
        ([], "empty array"),
        ([{"role": "robot", "content": "hi"}], "Invalid value: 'robot'"),
        ([{"role": "tool", "content": "1"}], "'messages[0].tool_call_id'"),
    ],
)
def test_unpaired_tool_messages_and_bad_messages_get_openai_400s(
    standin: StandIn, api: openai.OpenAI, messages: list[Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="gpt-4.1", messages=messages, tools=CHAT_TOOLS)
    body = caught.value.body
    assert isinstance(body, dict) and message in body["message"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "object"}}}
                ]
            },
            "'additionalProperties' is required",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "strict": True,
                            "parameters": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"x": {"type": "string"}},
                            },
                        },
                    }
                ]
            },
            "Missing 'x'",
        ),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "does not match pattern"),
        ({"tools": [{"type": "function", "name": "f"}]}, "'tools[0].function'"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope' is not among"),
        ({"tool_choice": "sometimes"}, "Invalid value: 'sometimes'"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "s", "strict": True, "schema": {"type": "object", "properties": {}}},
                }
            },
            "Invalid schema for response_format 's'",
        ),
        ({"model": ""}, "Missing required parameter: 'model'"),
        ({"max_tokens": "ten"}, "'max_tokens': expected an integer"),
    ],
)
def test_invalid_tools_strict_schemas_and_choices_are_refused(
    standin: StandIn, extra: dict[str, Any], message: str
) -> None:
    reply = post(standin, "/chat/completions", chat_body(**extra))
    assert reply.status_code == 400 and message in reply.json()["error"]["message"]
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


# --- streams -----------------------------------------------------------------------------------


def test_the_stream_assembles_into_the_same_calls_as_the_plain_reply(standin: StandIn, api: openai.OpenAI) -> None:
    plain = api.chat.completions.create(model="gpt-4.1", messages=USER, tools=CHAT_TOOLS)
    expected = [(c.function.name, c.function.arguments) for c in plain.choices[0].message.tool_calls or []]  # type: ignore[union-attr]
    with api.chat.completions.create(
        model="gpt-4.1", messages=USER, tools=CHAT_TOOLS, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content == ""
    names: dict[int, str] = {}
    arguments: dict[int, list[str]] = {}
    finishes: list[str] = []
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
            for fragment in choice.delta.tool_calls or []:
                assert fragment.function is not None
                if fragment.id is not None:
                    assert fragment.function.name and fragment.function.arguments == "" and fragment.type == "function"
                    names[fragment.index] = fragment.function.name
                else:
                    arguments.setdefault(fragment.index, []).append(fragment.function.arguments or "")
    assert [(names[i], "".join(arguments[i])) for i in sorted(names)] == expected
    assert all(len(parts) >= 2 for parts in arguments.values())
    assert finishes == ["tool_calls"] and chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_a_raw_text_stream_is_data_only_and_ends_with_done(standin: StandIn) -> None:
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Tell me a joke please"}], "stream": True}
    raw = post(standin, "/chat/completions", body).text
    assert "event:" not in raw and raw.rstrip().endswith("data: [DONE]")
    chunks = raw_chunks(raw)
    assert all(c.usage is None for c in chunks)  # no usage chunk unless asked for
    texts = [c.choices[0].delta.content for c in chunks[1:] if c.choices[0].delta.content]
    assert len(texts) >= 2
    plain = post(standin, "/chat/completions", {**body, "stream": False}).json()
    assert "".join(texts) == plain["choices"][0]["message"]["content"]
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].choices[0].delta.content is None


def test_stream_faults_cut_error_ping_and_reset(standin: StandIn, api: openai.OpenAI) -> None:
    body = chat_body(stream=True)
    standin.faults = Faults(cut_stream_after=3)
    cut = post(standin, "/chat/completions", body).text
    assert "[DONE]" not in cut and len(data_lines(cut)) == 3
    assert all(c.choices[0].finish_reason is None for c in raw_chunks(cut))
    standin.faults = Faults(error_event_after=2, ping=True)
    broken = post(standin, "/chat/completions", body).text
    assert ": PING" in broken and "[DONE]" not in broken
    assert json.loads(data_lines(broken)[-1])["error"]["type"] == "server_error"
    with (
        pytest.raises(openai.APIError, match="offline stand-in fault"),
        api.chat.completions.create(model="gpt-4.1", messages=USER, stream=True) as stream,
    ):
        list(stream)
    standin.faults = Faults(malformed_json=True)
    lines = data_lines(post(standin, "/chat/completions", body).text)
    with pytest.raises(ValueError):
        json.loads(lines[2])
    standin.faults = Faults(reset_stream_after=2)
    with (
        pytest.raises((httpx.HTTPError, openai.APIError)),
        api.chat.completions.create(model="gpt-4.1", messages=USER, stream=True) as stream,
    ):
        list(stream)


# --- faults ------------------------------------------------------------------------------------


def test_status_faults_name_the_chat_path_and_carry_retry_headers(standin: StandIn, api: openai.OpenAI) -> None:
    standin.faults = Faults(status=404)
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="gpt-4.1", messages=USER)
    assert missing.value.body == {
        "message": "Invalid URL (POST /v1/chat/completions)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    standin.faults = Faults(status=429, retry_after="7", retry_after_ms="7000", error_code="insufficient_quota")
    with pytest.raises(openai.RateLimitError) as limited:
        api.chat.completions.create(model="gpt-4.1", messages=USER)
    assert limited.value.response.headers["retry-after"] == "7" and limited.value.code == "insufficient_quota"
    assert limited.value.response.headers["retry-after-ms"] == "7000"


def test_reply_faults_shape_the_completion(standin: StandIn, api: openai.OpenAI) -> None:
    standin.faults = Faults(response_status="incomplete", model_alias="gpt-4.1-2025-04-14")
    cut = api.chat.completions.create(model="gpt-4.1", messages=USER, tools=CHAT_TOOLS)
    assert cut.choices[0].finish_reason == "length" and cut.model == "gpt-4.1-2025-04-14"
    math = next(c for c in cut.choices[0].message.tool_calls or [] if c.function.name == "math_calculator")  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        json.loads(math.function.arguments)  # type: ignore[union-attr]
    standin.faults = Faults(response_status="failed")
    with pytest.raises(openai.InternalServerError) as failed:
        api.chat.completions.create(model="gpt-4.1", messages=USER, stream=True)
    assert isinstance(failed.value.body, dict) and failed.value.body["type"] == "server_error"
    standin.faults = Faults(bad_arguments="{oops", call_unknown_tool="rm_rf")
    odd = api.chat.completions.create(model="gpt-4.1", messages=USER, tools=CHAT_TOOLS)
    odd_calls = odd.choices[0].message.tool_calls or []
    assert [c.function.name for c in odd_calls][-1] == "rm_rf"  # type: ignore[union-attr]
    assert {c.function.arguments for c in odd_calls} == {"{oops"}  # type: ignore[union-attr]
    standin.faults = Faults(tool_call_loop=True)
    first = api.chat.completions.create(model="gpt-4.1", messages=USER, tools=CHAT_TOOLS)
    again = api.chat.completions.create(model="gpt-4.1", messages=answered(first), tools=CHAT_TOOLS)
    assert again.choices[0].finish_reason == "tool_calls"
    standin.faults = Faults(malformed_json=True)
    with pytest.raises(ValueError):
        json.loads(post(standin, "/chat/completions", chat_body()).text)
    standin.faults = Faults(ok_with_error=True)
    reply = post(standin, "/chat/completions", chat_body())
    assert reply.status_code == 200 and reply.json()["error"]["code"] == "bad_response_body"


# --- gateway personalities -----------------------------------------------------------------------


def test_a_gateway_without_the_responses_route_answers_one_apis_404(standin: StandIn, api: openai.OpenAI) -> None:
    standin.faults = Faults(responses_route="missing")
    reply = post(standin, "/responses", {"model": "gpt-4.1", "input": "hi"})
    assert reply.status_code == 404
    assert reply.json() == {
        "error": {
            "message": "Invalid URL (POST /v1/responses)",
            "type": "invalid_request_error",
            "param": "",
            "code": "",
        }
    }
    with pytest.raises(openai.NotFoundError):
        api.responses.create(model="gpt-4.1", input="hi")
    assert api.chat.completions.create(model="gpt-4.1", messages=USER).choices[0].message.content


def test_new_api_not_implemented_for_all_or_for_chat_only_models(standin: StandIn, api: openai.OpenAI) -> None:
    standin.faults = Faults(responses_route="not_implemented")
    reply = post(standin, "/responses", {"model": "gpt-4.1", "input": "hi"})
    error = reply.json()["error"]
    assert reply.status_code == 500 and error["message"].startswith("not implemented (request id: ")
    assert error == {**error, "type": "new_api_error", "param": "", "code": "convert_request_failed"}
    standin.faults = Faults(chat_only_models=("claude", "gemini"))
    with pytest.raises(openai.InternalServerError) as caught:
        api.responses.create(model="claude-sonnet-4-5", input="hi")
    assert caught.value.code == "convert_request_failed"
    assert post(standin, "/responses", {"model": "gemini-2.5-pro", "input": "hi"}).status_code == 500
    assert api.responses.create(model="gpt-4.1", input="hi").status == "completed"
    chat = api.chat.completions.create(model="claude-sonnet-4-5", messages=USER, tools=CHAT_TOOLS)
    assert len(chat.choices[0].message.tool_calls or []) == 4


def test_a_gateway_without_the_chat_route(standin: StandIn, api: openai.OpenAI) -> None:
    standin.faults = Faults(chat_route="missing")
    with pytest.raises(openai.NotFoundError) as caught:
        api.chat.completions.create(model="gpt-4.1", messages=USER)
    assert caught.value.body == {
        "message": "Invalid URL (POST /v1/chat/completions)",
        "type": "invalid_request_error",
        "param": "",
        "code": "",
    }
    assert api.responses.create(model="gpt-4.1", input="hi").status == "completed"


def _endpoint_types(upstream: StandIn) -> dict[str, Any]:
    listed = httpx.get(f"{upstream.base_url}/models", headers={"Authorization": "Bearer k"}).json()["data"]
    return {m["id"]: m.get("supported_endpoint_types") for m in listed}


def test_models_advertise_endpoint_types_only_when_asked(standin: StandIn) -> None:
    plain = _endpoint_types(standin)
    assert {"claude-sonnet-4-5", "gemini-2.5-pro", "deepseek-chat", "gpt-4.1"} <= set(plain)
    assert set(plain.values()) == {None}
    standin.faults = Faults(advertise_endpoints=True, chat_only_models=("claude", "gemini", "deepseek"))
    types = _endpoint_types(standin)
    assert types["claude-sonnet-4-5"] == types["gemini-2.5-pro"] == types["deepseek-chat"] == ["openai"]
    assert types["gpt-4.1"] == types["o4-mini"] == ["openai", "openai-response"]
    standin.faults = Faults(advertise_endpoints=True, responses_route="missing")
    assert all(t == ["openai"] for t in _endpoint_types(standin).values())


def test_paths_record_which_endpoints_a_client_tried(standin: StandIn, api: openai.OpenAI) -> None:
    standin.faults = Faults(chat_only_models=("claude",))
    with pytest.raises(openai.InternalServerError):
        api.responses.create(model="claude-sonnet-4-5", input="hi")
    api.chat.completions.create(model="claude-sonnet-4-5", messages=USER)
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="gpt-4.1", messages=[])
    rejected = httpx.post(f"{standin.base_url}/chat/completions", json=chat_body())  # no key: not recorded
    assert rejected.status_code == 401
    assert standin.paths == ["/v1/responses", "/v1/chat/completions", "/v1/chat/completions"]
    assert [r["model"] for r in standin.requests] == ["claude-sonnet-4-5", "claude-sonnet-4-5", "gpt-4.1"]
