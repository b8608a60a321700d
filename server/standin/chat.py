"""The stand-in's ``POST /v1/chat/completions``: the completion and its stream chunks (checks: ``chat_checks``).

It plans with the same deterministic model as ``/v1/responses``: the same prompt and tool outputs
get the same calls and the same answer on either endpoint.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from starlette.responses import Response

from server.standin import model
from server.standin.chat_checks import check_chat_tools, check_messages, response_format, tool_choice
from server.standin.common import (
    Faults,
    Frame,
    RequestError,
    StandInState,
    call_arguments,
    call_ids,
    json_reply,
    message_text,
    ok_with_error,
    plan_turn,
    received_media,
    stream_reply,
)
from server.standin.model import is_object

# --- building the completion ----------------------------------------------------------------------


def build_completion(body: dict[str, Any], faults: Faults) -> dict[str, Any]:
    if not body.get("model"):
        raise RequestError(400, "Missing required parameter: 'model'.", param="model")
    messages = check_messages(body.get("messages"))
    tools = check_chat_tools(body.get("tools"))
    choice = tool_choice(body.get("tool_choice"), tools)
    kind, schema = response_format(body.get("response_format"))
    for limit in ("max_tokens", "max_completion_tokens"):
        if body.get(limit) is not None and (not isinstance(body[limit], int) or isinstance(body[limit], bool)):
            raise RequestError(400, f"Invalid type for '{limit}': expected an integer.", param=limit)
    users = [n for n, m in enumerate(messages) if m["role"] == "user" and message_text(m).strip()]
    prompt = message_text(messages[users[-1]]) if users else ""
    names: dict[str, str] = {}
    for message in messages:
        calls: list[Any] = (message.get("tool_calls") or []) if message["role"] == "assistant" else []
        names.update((c["id"], c["function"]["name"]) for c in calls)
    # The outputs of the turn since the last user message are what the answer reports.
    turn = [m for m in messages[(users[-1] if users else -1) + 1 :] if m["role"] == "tool"]
    outputs = [(names.get(m["tool_call_id"], "?"), message_text(m)) for m in turn]
    done = {names.get(m["tool_call_id"], "") for m in turn}
    parallel = body.get("parallel_tool_calls", True) is not False
    planned = plan_turn(prompt, tools, done, choice, parallel, faults)
    if faults.response_status == "failed":
        reason = "The model failed to generate a response (offline stand-in fault)."
        raise RequestError(500, reason, type_="server_error", code="server_error")

    tool_calls: list[dict[str, Any]] = [
        {"id": cid, "type": "function", "function": {"name": c.name, "arguments": call_arguments(c, faults)}}
        for c, cid in zip(planned, call_ids(len(planned), faults), strict=True)
    ]
    text: str | None = None
    if not planned and kind == "json_schema":
        text = model.structured_answer(schema, outputs)
    elif not planned:
        text = model.answer(prompt, outputs, str(body.get("model") or ""))
        if media := received_media(messages):
            text += "\n" + media
        text = json.dumps({"answer": text}, ensure_ascii=False) if kind == "json_object" else text
    if not planned and faults.answer_text is not None:
        text = faults.answer_text
    finish = "tool_calls" if tool_calls else "stop"
    if faults.response_status == "incomplete":
        finish = "length"
        for call in tool_calls:
            arguments = call["function"]["arguments"]
            call["function"]["arguments"] = arguments[: max(1, len(arguments) // 2)]
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if tool_calls:
        message["tool_calls"] = tool_calls

    effort = body.get("reasoning_effort")
    reasoning_tokens = 8 if effort not in (None, "none") else 0
    prompt_tokens = model.estimate_tokens(json.dumps(messages, ensure_ascii=False) + json.dumps(tools))
    completion_tokens = model.estimate_tokens(json.dumps(message, ensure_ascii=False)) + reasoning_tokens
    return {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": faults.model_alias or body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens if faults.usage_tokens is None else faults.usage_tokens,
            "completion_tokens": completion_tokens if faults.usage_tokens is None else faults.usage_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
        },
        "service_tier": "default",
        "system_fingerprint": None,
    }


# --- streaming ----------------------------------------------------------------------------------


def _pieces(text: str, words: int = 4) -> list[str]:
    found = [w for w in re.findall(r"\S*\s*", text) if w]
    return ["".join(found[i : i + words]) for i in range(0, len(found), words)]


def stream_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The chunks OpenAI streams for ``completion``, in order (a usage-only chunk last if asked)."""
    head = {k: completion[k] for k in ("id", "created", "model", "service_tier", "system_fingerprint")}
    base: dict[str, Any] = {**head, "object": "chat.completion.chunk"}
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    choice = completion["choices"][0]
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in _pieces(choice["message"]["content"] or "")]
    for index, call in enumerate(choice["message"].get("tool_calls", [])):
        function = call["function"]
        opening = {"index": index, "id": call["id"], "type": "function"}
        chunks.append(chunk({"tool_calls": [{**opening, "function": {"name": function["name"], "arguments": ""}}]}))
        arguments: str = function["arguments"]
        size = max(1, min(24, len(arguments) // 2))
        for start in range(0, len(arguments), size):
            fragment = {"index": index, "function": {"arguments": arguments[start : start + size]}}
            chunks.append(chunk({"tool_calls": [fragment]}))
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks


def _error_chunk(_number: int) -> str:
    message = "The server had an error while processing your request (offline stand-in fault)."
    error = {"error": {"message": message, "type": "server_error", "param": None, "code": "server_error"}}
    return f"data: {json.dumps(error)}\n\n"


# --- the endpoint -------------------------------------------------------------------------------


async def handle(body: dict[str, Any], state: StandInState) -> Response:
    """Answer a checked-in ``POST /v1/chat/completions`` body (key, personality and status faults passed)."""
    faults = state.faults
    try:
        completion = build_completion(body, faults)
    except RequestError as exc:
        return exc.response()
    if faults.ok_with_error:
        return ok_with_error()
    if body.get("stream"):
        options: Any = body.get("stream_options")
        include_usage = is_object(options) and options.get("include_usage") is True
        frames: list[Frame] = [
            (None, json.dumps(c, ensure_ascii=False)) for c in stream_chunks(completion, include_usage)
        ]
        return stream_reply(frames, state, error_frame=_error_chunk, done=True)
    return json_reply(completion, faults)
