"""The stand-in's HTTP side: ``POST /v1/responses`` (JSON and SSE) and ``GET /v1/models``,
with the real error envelope, request checks, and switchable faults."""

from __future__ import annotations

import email.utils
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server.standin import model
from server.standin.model import is_array, is_object

MODEL_IDS = ("gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini", "o4-mini")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class Faults:
    """Switches for misbehaviour; change them between requests. All off by default."""

    latency: float = 0.0
    """Seconds to wait before answering at all."""
    first_byte_delay: float = 0.0
    """Seconds between the response headers and the first stream event."""
    status: int | None = None
    """Answer every request (or those in ``fail_requests``) with this HTTP status."""
    fail_requests: set[int] | None = None
    """1-based request numbers that get ``status``; None means all of them."""
    retry_after: str | None = None
    retry_after_ms: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_type: str | None = None
    malformed_json: bool = False
    """JSON replies are not JSON; in a stream, one ``data:`` line is not JSON."""
    ok_with_error: bool = False
    """A 200 reply whose body is an error object (gateway habit)."""
    cut_stream_after: int | None = None
    """End the stream after this many events, with no terminal event."""
    reset_stream_after: int | None = None
    """Abort the connection after this many events."""
    error_event_after: int | None = None
    """Send an ``error`` event after this many events, then end."""
    ping: bool = False
    """Interleave ``: PING`` comment lines, as new-api does."""
    done_marker: bool = False
    """End streams with ``data: [DONE]``."""
    no_event_lines: bool = False
    """Omit ``event:`` lines: only ``data:`` lines."""
    model_alias: str | None = None
    """Report this model name instead of the requested one."""
    response_status: str | None = None
    """``incomplete`` (function call arguments cut off) or ``failed``."""
    tool_call_loop: bool = False
    """Call the first offered tool on every turn, never answering (a runaway model)."""
    bad_arguments: str | None = None
    """Send this string as every function call's ``arguments``."""
    call_unknown_tool: str | None = None
    """Add a call to this (unoffered) tool name."""


@dataclass
class StandInState:
    """What one stand-in holds between requests: its key, its faults, the bodies received, stored
    responses (for ``previous_response_id``), and request counts.
    """

    api_key: str | None = None
    faults: Faults = field(default_factory=Faults)
    requests: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    stored: dict[str, dict[str, Any]] = field(default_factory=dict[str, dict[str, Any]])
    count: int = 0
    active: int = 0
    """Requests being answered right now (a stream counts until it ends or the client leaves)."""


class RequestError(Exception):
    """A request the stand-in refuses; ``response()`` gives it the real endpoint's error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


# --- request checks ----------------------------------------------------------------------------


def _strict_problem(schema: Any, path: str = "") -> str | None:
    """Why ``schema`` is not a valid strict schema, or None (the rules of Structured Outputs)."""
    if not is_object(schema):
        return f"In context=({path}), schema must be an object."
    for bad in ("allOf", "not", "if", "then", "else", "oneOf", "patternProperties", "dependentRequired"):
        if bad in schema:
            return f"In context=({path}), '{bad}' is not permitted."
    types = schema.get("type")
    if types == "object" or (is_array(types) and "object" in types):
        if schema.get("additionalProperties") is not False:
            return f"In context=({path}), 'additionalProperties' is required to be supplied and to be false."
        props: Any = schema.get("properties") or {}
        missing: list[Any] = [k for k in props if k not in (schema.get("required") or [])]
        if missing:
            return (
                f"In context=({path}), 'required' is required to be supplied and to be an array including every key "
                f"in properties. Missing '{missing[0]}'."
            )
        for key, sub in props.items():
            if problem := _strict_problem(sub, f"{path}, 'properties', '{key}'" if path else f"'properties', '{key}'"):
                return problem
    for key in ("items",):
        if is_object(schema.get(key)) and (problem := _strict_problem(schema[key], f"{path}, '{key}'")):
            return problem
    options: Any = schema.get("anyOf") or []
    for i, option in enumerate(options):
        if problem := _strict_problem(option, f"{path}, 'anyOf', '{i}'"):
            return problem
    defs: Any = schema.get("$defs") or {}
    for name, sub in defs.items():
        if problem := _strict_problem(sub, f"{path}, '$defs', '{name}'"):
            return problem
    return None


def check_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not is_array(tools):
        raise RequestError(400, "Invalid type for 'tools': expected an array.", param="tools")
    for i, tool in enumerate(tools):
        if not is_object(tool) or "type" not in tool:
            raise RequestError(400, f"Missing required parameter: 'tools[{i}].type'.", param=f"tools[{i}].type")
        if tool["type"] != "function":
            continue
        if "function" in tool and "name" not in tool:
            raise RequestError(
                400,
                f"Missing required parameter: 'tools[{i}].name'. (Chat Completions' nested "
                "'function' object is not the Responses shape.)",
                param=f"tools[{i}].name",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RequestError(
                400,
                f"Invalid 'tools[{i}].name': string does not match pattern. Expected a string "
                "that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                param=f"tools[{i}].name",
                code="invalid_value",
            )
        params = tool.get("parameters")
        if params is not None and (not is_object(params) or params.get("type", "object") != "object"):
            raise RequestError(
                400,
                f"Invalid schema for function '{name}': schema must be a JSON Schema of "
                "'type: \"object\"', got 'type: \"None\"'.",
                param=f"tools[{i}].parameters",
                code="invalid_function_parameters",
            )
        if tool.get("strict") is True and (problem := _strict_problem(params or {"type": "object"})):
            raise RequestError(
                400,
                f"Invalid schema for function '{name}': {problem}",
                param=f"tools[{i}].parameters",
                code="invalid_function_parameters",
            )
    return tools


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


def _as_items(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not is_array(value) or not all(is_object(i) for i in value):
        raise RequestError(
            400, "Invalid type for 'input': expected a string or an array of input items.", param="input"
        )
    return [{"type": "message", **i} if "type" not in i and "role" in i else i for i in value]


def _message_text(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if is_array(content):
        return " ".join(str(p.get("text", "")) for p in content if is_object(p))
    return ""


# --- building the response -----------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _user_prompt(items: list[dict[str, Any]]) -> str:
    users = [_message_text(i) for i in items if i.get("type") == "message" and i.get("role") == "user"]
    return users[-1] if users else ""


def build_response(body: dict[str, Any], items: list[dict[str, Any]], faults: Faults) -> dict[str, Any]:
    tools = check_tools(body.get("tools"))
    prompt = _user_prompt(items)
    names = {c.get("call_id"): c.get("name", "") for c in items if c.get("type") == "function_call"}
    # The outputs of the turn since the last user message are what the answer reports.
    last_user = max(
        (n for n, i in enumerate(items) if i.get("type") == "message" and i.get("role") == "user"), default=-1
    )
    turn_outputs = [
        (
            names.get(o.get("call_id"), "?"),
            o["output"] if isinstance(o.get("output"), str) else json.dumps(o.get("output")),
        )
        for o in items[last_user + 1 :]
        if o.get("type") == "function_call_output"
    ]
    done = {names.get(o.get("call_id"), "") for o in items[last_user + 1 :] if o.get("type") == "function_call_output"}
    parallel = body.get("parallel_tool_calls", True) is not False
    if faults.tool_call_loop and tools:
        first = next(t for t in tools if t.get("type") == "function")
        planned = [model.PlannedCall(first["name"], model.plan_arguments(prompt, first.get("parameters") or {}, False))]
    else:
        planned = model.plan_calls(prompt, tools, done, body.get("tool_choice", "auto"), parallel)
    if faults.call_unknown_tool and faults.call_unknown_tool not in done:
        planned.append(model.PlannedCall(faults.call_unknown_tool, {}))

    output: list[dict[str, Any]] = []
    reasoning: dict[str, Any] | None = body.get("reasoning") if is_object(body.get("reasoning")) else None
    reasoning_tokens = 0
    if reasoning and reasoning.get("effort") not in (None, "none"):
        item: dict[str, Any] = {"id": _id("rs"), "type": "reasoning", "summary": []}
        if "reasoning.encrypted_content" in (body.get("include") or []):
            item["encrypted_content"] = "standin-" + secrets.token_hex(16)
        output.append(item)
        reasoning_tokens = 8
    for call in planned:
        arguments = faults.bad_arguments if faults.bad_arguments is not None else json.dumps(call.arguments)
        output.append(
            {
                "id": _id("fc"),
                "type": "function_call",
                "status": "completed",
                "arguments": arguments,
                "call_id": _id("call"),
                "name": call.name,
            }
        )
    if not planned:
        text_options: Any = body.get("text") or {}
        text_format: Any = text_options.get("format") or {}
        if text_format.get("type") == "json_schema":
            text = model.structured_answer(text_format.get("schema") or {}, turn_outputs)
        else:
            text = model.answer(prompt, turn_outputs)
        output.append(
            {
                "id": _id("msg"),
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
    return {
        "id": _id("resp"),
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
            for start in range(0, len(args), 24):
                events.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": item["id"],
                        "output_index": index,
                        "delta": args[start : start + 24],
                    }
                )
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": index,
                    "name": item["name"],
                    "arguments": args,
                }
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


async def _sse(events: list[dict[str, Any]], faults: Faults, state: StandInState) -> AsyncIterator[bytes]:
    try:
        async for chunk in _sse_events(events, faults):
            yield chunk
    finally:
        state.active -= 1


async def _sse_events(events: list[dict[str, Any]], faults: Faults) -> AsyncIterator[bytes]:
    if faults.first_byte_delay:
        await anyio.sleep(faults.first_byte_delay)
    for number, event in enumerate(events):
        if faults.ping and number % 3 == 0:
            yield b": PING\n\n"
        if faults.cut_stream_after is not None and number >= faults.cut_stream_after:
            return
        if faults.reset_stream_after is not None and number >= faults.reset_stream_after:
            raise ConnectionResetError("offline stand-in: stream reset (fault)")
        if faults.error_event_after is not None and number >= faults.error_event_after:
            error = {
                "type": "error",
                "code": "server_error",
                "param": None,
                "sequence_number": number,
                "message": "The server had an error while processing your request (offline stand-in fault).",
            }
            yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
            return
        data = json.dumps({**event, "sequence_number": number}, ensure_ascii=False)
        if faults.malformed_json and number == 2:
            data = data[: len(data) // 2]
        head = "" if faults.no_event_lines else f"event: {event['type']}\n"
        yield f"{head}data: {data}\n\n".encode()
    if faults.done_marker:
        yield b"data: [DONE]\n\n"


# --- the app ------------------------------------------------------------------------------------


def _fault_error(state: StandInState) -> JSONResponse | None:
    faults = state.faults
    if faults.status is None or (faults.fail_requests is not None and state.count not in faults.fail_requests):
        return None
    defaults = {
        401: ("Incorrect API key provided (offline stand-in fault).", "invalid_request_error", "invalid_api_key"),
        403: ("You are not allowed to use this model (offline stand-in fault).", "permission_error", None),
        404: ("Invalid URL (POST /v1/responses)", "invalid_request_error", None),
        429: ("Rate limit reached for requests (offline stand-in fault).", "requests", "rate_limit_exceeded"),
    }
    message, type_, code = defaults.get(
        faults.status, ("Upstream failure (offline stand-in fault).", "server_error", None)
    )
    headers: dict[str, str] = {}
    if faults.retry_after is not None:
        headers["retry-after"] = faults.retry_after
    if faults.retry_after_ms is not None:
        headers["retry-after-ms"] = faults.retry_after_ms
    error = RequestError(
        faults.status, faults.error_message or message, type_=faults.error_type or type_, code=faults.error_code or code
    )
    return error.response(headers)


def _check_key(request: Request, state: StandInState) -> JSONResponse | None:
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if token and (state.api_key is None or secrets.compare_digest(token.encode(), state.api_key.encode())):
        return None
    return RequestError(
        401, "Incorrect API key provided. You can find your API key at the gateway console.", code="invalid_api_key"
    ).response()


def create_app(state: StandInState) -> Starlette:
    async def responses(request: Request) -> Response:
        state.count += 1
        state.active += 1
        streaming = False
        try:
            response = await answer(request)
            streaming = isinstance(response, StreamingResponse)
            return response
        finally:
            if not streaming:
                state.active -= 1  # a stream is counted until its generator ends

    async def answer(request: Request) -> Response:
        faults = state.faults
        if (denied := _check_key(request, state)) is not None:
            return denied
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return RequestError(400, "We could not parse the JSON body of your request.").response()
        if not is_object(body):
            return RequestError(400, "The request body must be a JSON object.").response()
        state.requests.append(body)
        if faults.latency:
            await anyio.sleep(faults.latency)
        if (error := _fault_error(state)) is not None:
            return error
        try:
            if not body.get("model"):
                raise RequestError(400, "Missing required parameter: 'model'.", param="model")
            items = _as_items(body.get("input"))
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
            return JSONResponse(
                {
                    "error": {
                        "message": "upstream error: bad_response_body (offline stand-in fault)",
                        "type": "new_api_error",
                        "param": "",
                        "code": "bad_response_body",
                    }
                }
            )
        if body.get("stream"):
            return StreamingResponse(
                _sse(stream_events(response), faults, state),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        if faults.malformed_json:
            return Response(json.dumps(response)[:100], media_type="application/json")
        return JSONResponse(response)

    async def models(request: Request) -> Response:
        if (denied := _check_key(request, state)) is not None:
            return denied
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "offline-stand-in"} for m in MODEL_IDS
        ]
        return JSONResponse({"object": "list", "data": data})

    async def not_found(request: Request) -> Response:
        return RequestError(404, f"Invalid URL ({request.method} {request.url.path})").response()

    return Starlette(
        routes=[
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)
