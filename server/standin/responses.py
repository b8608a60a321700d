"""The stand-in's ``POST /v1/responses``: request checks, the response object, and its SSE events."""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from starlette.responses import Response

from server.standin import model
from server.standin.common import (
    Faults,
    Frame,
    RequestError,
    StandInState,
    call_arguments,
    call_ids,
    check_function,
    check_name,
    json_reply,
    message_text,
    new_id,
    ok_with_error,
    plan_turn,
    received_media,
    stream_reply,
)
from server.standin.model import is_array, is_object

# --- request checks ----------------------------------------------------------------------------


TOOL_TYPES = (
    "function",
    "file_search",
    "computer",
    "computer_use_preview",
    "web_search",
    "web_search_2025_08_26",
    "mcp",
    "code_interpreter",
    "programmatic_tool_calling",
    "image_generation",
    "local_shell",
    "shell",
    "custom",
    "namespace",
    "tool_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "apply_patch",
)
"""The ``type`` values of a Responses tool (openai-python's ``ToolParam``). Only ``function`` tools,
top-level or inside a ``namespace``, are ever called by the stand-in; the others are accepted and
left alone (they are the platform's own tools, or take free-form input)."""
NAMESPACE_TOOL_TYPES = ("function", "custom")
"""The ``type`` values of a tool inside a namespace."""
_REQUIRED: dict[str, tuple[str, ...]] = {
    "file_search": ("vector_store_ids",),
    "computer_use_preview": ("display_height", "display_width", "environment"),
    "mcp": ("server_label",),
    "code_interpreter": ("container",),
    "custom": ("name",),
    "namespace": ("name", "description", "tools"),
}
"""Required fields of the tool types that have any besides ``type`` (and a function's ``name``)."""


def _supported(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _check_type(tool: Any, where: str, allowed: tuple[str, ...]) -> str:
    if not is_object(tool) or "type" not in tool:
        raise RequestError(400, f"Missing required parameter: '{where}.type'.", param=f"{where}.type")
    kind = tool["type"]
    if kind not in allowed:
        raise RequestError(
            400,
            f"Invalid value: '{kind}'. Supported values are: {_supported(allowed)}.",
            param=f"{where}.type",
            code="invalid_value",
        )
    for key in _REQUIRED.get(kind, ()):
        if key not in tool:
            raise RequestError(400, f"Missing required parameter: '{where}.{key}'.", param=f"{where}.{key}")
    return kind


def _check_function_tool(tool: dict[str, Any], where: str) -> None:
    if "function" in tool and "name" not in tool:
        raise RequestError(
            400,
            f"Missing required parameter: '{where}.name'. (Chat Completions' nested "
            "'function' object is not the Responses shape.)",
            param=f"{where}.name",
        )
    check_function(tool.get("name"), tool.get("parameters"), tool.get("strict") is True, where)


def _check_namespace(tool: dict[str, Any], where: str) -> None:
    check_name(tool["name"], where)
    if not isinstance(tool["description"], str):
        raise RequestError(
            400, f"Invalid type for '{where}.description': expected a string.", param=f"{where}.description"
        )
    nested: Any = tool["tools"]
    if not is_array(nested):
        raise RequestError(400, f"Invalid type for '{where}.tools': expected an array.", param=f"{where}.tools")
    for j, inner in enumerate(nested):
        inner_where = f"{where}.tools[{j}]"
        kind = _check_type(inner, inner_where, NAMESPACE_TOOL_TYPES)
        if kind == "function":
            _check_function_tool(inner, inner_where)
        else:
            check_name(inner["name"], inner_where)


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """The request's ``tools``, refused (400) where the real endpoint refuses them."""
    if tools is None:
        return []
    if not is_array(tools):
        raise RequestError(400, "Invalid type for 'tools': expected an array.", param="tools")
    for i, tool in enumerate(tools):
        kind = _check_type(tool, f"tools[{i}]", TOOL_TYPES)
        if kind == "function":
            _check_function_tool(tool, f"tools[{i}]")
        elif kind == "namespace":
            _check_namespace(tool, f"tools[{i}]")
        elif kind == "custom":
            check_name(tool["name"], f"tools[{i}]")
    return tools


def offered_functions(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The function tools the model may call, from checked ``tools``: the top-level ones and those
    of each namespace, the latter with a ``namespace`` key naming it. Built-in and custom tools are
    never among them."""
    functions: list[dict[str, Any]] = []
    for tool in tools:
        if tool["type"] == "function":
            functions.append(tool)
        elif tool["type"] == "namespace":
            functions += [{**t, "namespace": tool["name"]} for t in tool["tools"] if t["type"] == "function"]
    return functions


def check_input(items: list[dict[str, Any]]) -> None:
    calls = [i for i in items if i.get("type") == "function_call"]
    outputs = [i for i in items if i.get("type") == "function_call_output"]
    call_ids = {c.get("call_id") for c in calls}
    output_ids = {o.get("call_id") for o in outputs}
    for i, item in enumerate(items):
        if item.get("type") == "function_call" and str(item.get("id", "fc_")).startswith("call_"):
            raise RequestError(
                400,
                f"Invalid 'input[{i}].id': '{item['id']}'. Expected an ID that begins with 'fc'.",
                param=f"input[{i}].id",
                code="invalid_value",
            )
        if item.get("type") == "function_call" and not isinstance(item.get("arguments"), str):
            raise RequestError(
                400, f"Invalid type for 'input[{i}].arguments': expected a string.", param=f"input[{i}].arguments"
            )
        if item.get("type") == "function_call" and not isinstance(item.get("namespace", ""), str):
            raise RequestError(
                400, f"Invalid type for 'input[{i}].namespace': expected a string.", param=f"input[{i}].namespace"
            )
        if item.get("type") == "function_call_output" and not isinstance(item.get("output"), str | list):
            raise RequestError(
                400, f"Invalid type for 'input[{i}].output': expected a string.", param=f"input[{i}].output"
            )
    for output in outputs:
        if output.get("call_id") not in call_ids:
            raise RequestError(
                400, f"No tool call found for function call output with call_id {output.get('call_id')}.", param="input"
            )
    for call in calls:
        if call.get("call_id") not in output_ids:
            raise RequestError(400, f"No tool output found for function call {call.get('call_id')}.", param="input")


def as_items(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not is_array(value) or not all(is_object(i) for i in value):
        raise RequestError(
            400, "Invalid type for 'input': expected a string or an array of input items.", param="input"
        )
    return [{"type": "message", **i} if "type" not in i and "role" in i else i for i in value]


# --- building the response -----------------------------------------------------------------------


def _call_key(call: dict[str, Any]) -> str:
    """The ``model.tool_key`` of a replayed function call (its namespace, if any, qualifies its name)."""
    name, namespace = call.get("name"), call.get("namespace")
    return model.tool_key(str(name or ""), namespace if isinstance(namespace, str) else None)


def build_response(body: dict[str, Any], items: list[dict[str, Any]], faults: Faults) -> dict[str, Any]:
    tools = check_tools(body.get("tools"))
    # A user message of images alone (what tools returned) is not a new prompt.
    users = [
        n
        for n, i in enumerate(items)
        if i.get("type") == "message" and i.get("role") == "user" and message_text(i).strip()
    ]
    prompt = message_text(items[users[-1]]) if users else ""
    calls = {c.get("call_id"): c for c in items if c.get("type") == "function_call"}
    # The outputs of the turn since the last user message are what the answer reports.
    turn = [o for o in items[(users[-1] if users else -1) + 1 :] if o.get("type") == "function_call_output"]
    turn_outputs = [
        (
            str(calls.get(o.get("call_id"), {}).get("name", "?")),
            o["output"] if isinstance(o.get("output"), str) else json.dumps(o.get("output")),
        )
        for o in turn
    ]
    done = {_call_key(calls.get(o.get("call_id"), {})) for o in turn}
    parallel = body.get("parallel_tool_calls", True) is not False
    functions = offered_functions(tools)
    planned = plan_turn(prompt, functions, done, body.get("tool_choice", "auto"), parallel, faults)

    output: list[dict[str, Any]] = []
    reasoning: dict[str, Any] | None = body.get("reasoning") if is_object(body.get("reasoning")) else None
    reasoning_tokens = 0
    if reasoning and reasoning.get("effort") not in (None, "none"):
        item: dict[str, Any] = {"id": new_id("rs"), "type": "reasoning", "summary": []}
        if "reasoning.encrypted_content" in (body.get("include") or []):
            item["encrypted_content"] = "standin-" + secrets.token_hex(16)
        output.append(item)
        reasoning_tokens = 8
    for call, call_id in zip(planned, call_ids(len(planned), faults), strict=True):
        output.append(
            {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "completed",
                "arguments": call_arguments(call, faults),
                "call_id": call_id,
                "name": call.name,
                **({"namespace": call.namespace} if call.namespace else {}),
            }
        )
    if not planned:
        text_options: Any = body.get("text") or {}
        text_format: Any = text_options.get("format") or {}
        if text_format.get("type") == "json_schema":
            text = model.structured_answer(text_format.get("schema") or {}, turn_outputs)
        else:
            text = model.answer(prompt, turn_outputs, str(body.get("model") or ""))
            if media := received_media([i for i in items if i.get("type") == "message"]):
                text += "\n" + media
        if faults.answer_text is not None:
            text = faults.answer_text
        output.append(
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        )

    status, incomplete, error = "completed", None, None
    if faults.response_status == "incomplete":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        for item in output:
            if item["type"] == "function_call":
                item["arguments"] = item["arguments"][: max(1, len(item["arguments"]) // 2)]
                item["status"] = "incomplete"
    elif faults.response_status == "failed":
        status, output = "failed", []
        error = {"code": "server_error", "message": "The model failed to generate a response (offline stand-in fault)."}

    input_text = json.dumps(items, ensure_ascii=False) + str(body.get("instructions") or "") + json.dumps(tools)
    output_text = json.dumps(output, ensure_ascii=False)
    usage: dict[str, Any] = {
        "input_tokens": model.estimate_tokens(input_text),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": model.estimate_tokens(output_text) + reasoning_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    if faults.usage_tokens is not None:
        usage["input_tokens"] = usage["output_tokens"] = faults.usage_tokens
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": faults.model_alias or body["model"],
        "output": output,
        "parallel_tool_calls": parallel,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": (reasoning or {}).get("effort"), "summary": None},
        "store": body.get("store", True),
        "temperature": 1.0,
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": tools,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


# --- streaming ----------------------------------------------------------------------------------


def stream_events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The event sequence OpenAI sends for ``response``, in order, without sequence numbers."""
    snapshot: dict[str, Any] = {
        **response,
        "status": "in_progress",
        "output": [],
        "usage": None,
        "error": None,
        "incomplete_details": None,
    }
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": snapshot},
        {"type": "response.in_progress", "response": snapshot},
    ]
    for index, item in enumerate(response["output"]):
        if item["type"] == "function_call":
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "arguments": "", "status": "in_progress"},
                }
            )
            args = item["arguments"]
            common = {"item_id": item["id"], "output_index": index}
            for start in range(0, len(args), 24):
                events.append(
                    {"type": "response.function_call_arguments.delta", **common, "delta": args[start : start + 24]}
                )
            events.append(
                {"type": "response.function_call_arguments.done", **common, "name": item["name"], "arguments": args}
            )
        elif item["type"] == "message":
            text = item["content"][0]["text"]
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress", "content": []},
                }
            )
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events.append({"type": "response.content_part.added", **common, "part": part})
            for word in re.findall(r"\S*\s*", text):
                if word:
                    events.append({"type": "response.output_text.delta", **common, "delta": word, "logprobs": []})
            events.append({"type": "response.output_text.done", **common, "text": text, "logprobs": []})
            events.append({"type": "response.content_part.done", **common, "part": {**part, "text": text}})
        else:
            events.append({"type": "response.output_item.added", "output_index": index, "item": item})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}
    events.append({"type": terminal[response["status"]], "response": response})
    return events


def _error_event(number: int) -> str:
    error = {
        "type": "error",
        "code": "server_error",
        "param": None,
        "sequence_number": number,
        "message": "The server had an error while processing your request (offline stand-in fault).",
    }
    return f"event: error\ndata: {json.dumps(error)}\n\n"


# --- the endpoint -------------------------------------------------------------------------------


async def handle(body: dict[str, Any], state: StandInState) -> Response:
    """Answer a checked-in ``POST /v1/responses`` body (key, personality and status faults passed)."""
    faults = state.faults
    try:
        if not body.get("model"):
            raise RequestError(400, "Missing required parameter: 'model'.", param="model")
        items = as_items(body.get("input"))
        previous = body.get("previous_response_id")
        if previous:
            if previous not in state.stored:
                raise RequestError(
                    400,
                    f"Previous response with id '{previous}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            items = state.stored[previous]["items"] + items
        check_input(items)
        response = build_response(body, items, faults)
    except RequestError as exc:
        return exc.response()
    if body.get("store", True) is not False:
        state.stored[response["id"]] = {"items": items + response["output"]}
    if faults.ok_with_error:
        return ok_with_error()
    if body.get("stream"):
        frames: list[Frame] = [
            (event["type"], json.dumps({**event, "sequence_number": number}, ensure_ascii=False))
            for number, event in enumerate(stream_events(response))
        ]
        return stream_reply(frames, state, error_frame=_error_event, done=faults.done_marker)
    return json_reply(response, faults)
