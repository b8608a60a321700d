"""What both of the stand-in's endpoints share: the fault switches, the state between requests,
the error envelope, the function and schema checks, the turn planner, and the SSE writer."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from starlette.responses import JSONResponse, Response, StreamingResponse

from server.standin import model
from server.standin.model import is_array, is_object

RESPONSES_PATH = "/v1/responses"
CHAT_PATH = "/v1/chat/completions"
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class Faults:
    """Switches for misbehaviour; change them between requests. All off by default.

    Unless a switch says otherwise it applies to ``/v1/responses`` and ``/v1/chat/completions`` alike.
    """

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
    """End the stream after this many events, with no terminal event (chat: no finish_reason, no [DONE])."""
    reset_stream_after: int | None = None
    """Abort the connection after this many events."""
    error_event_after: int | None = None
    """Send an ``error`` event (chat: a ``data: {"error": ...}`` chunk) after this many events, then end."""
    ping: bool = False
    """Interleave ``: PING`` comment lines, as new-api does."""
    done_marker: bool = False
    """End Responses streams with ``data: [DONE]`` (chat streams always end with it)."""
    no_event_lines: bool = False
    """Omit ``event:`` lines from Responses streams: only ``data:`` lines (chat streams never have them)."""
    model_alias: str | None = None
    """Report this model name instead of the requested one."""
    response_status: str | None = None
    """``incomplete`` (function call arguments cut off; chat: finish_reason ``length``) or ``failed``
    (chat: HTTP 500)."""
    tool_call_loop: bool = False
    """Call the first offered tool on every turn, never answering (a runaway model)."""
    calls_per_turn: int = 1
    """With ``tool_call_loop``: how many calls of that tool each turn makes."""
    bad_arguments: str | None = None
    """Send this string as every function call's ``arguments``."""
    call_unknown_tool: str | None = None
    """Add a call to this (unoffered) tool name."""
    responses_route: Literal["ok", "missing", "not_implemented"] = "ok"
    """Gateway personality for ``POST /v1/responses``: ``missing`` answers one-api's 404 Invalid URL;
    ``not_implemented`` answers new-api's 500 ``convert_request_failed`` (a non-OpenAI channel)."""
    chat_only_models: tuple[str, ...] = ()
    """Model-name prefixes (e.g. ``("claude", "gemini")``) whose ``/v1/responses`` requests get the
    ``not_implemented`` 500 while other models are served, as new-api routes per channel."""
    chat_route: Literal["ok", "missing"] = "ok"
    """``missing``: ``POST /v1/chat/completions`` answers a 404 Invalid URL (a gateway serving neither)."""
    answer_text: str | None = None
    """Answer with this text instead of the model's (e.g. a lone surrogate, or the caller's key echoed)."""
    same_call_ids: bool = False
    """Give every function call of a turn the same call id."""
    usage_tokens: Any = None
    """Report this value (e.g. ``12.5``, ``"7"``) as the input and output token counts."""
    stall_after: int | None = None
    """After this many stream events, send only ``: PING`` comments, every 0.2 s, until the client leaves."""
    pricing_route: Literal["ok", "missing"] = "ok"
    """``missing``: ``GET /api/pricing`` answers 404, as gateways outside the new-api family do."""
    billing_route: Literal["ok", "missing"] = "ok"
    """``missing``: ``GET /v1/dashboard/billing/subscription`` and ``/usage`` answer 404."""
    model_latency: dict[str, float] = field(default_factory=dict[str, float])
    """Seconds added before answering a request for this model (after ``latency``): models of
    different speeds, for fan-out."""
    unknown_models: tuple[str, ...] = ()
    """Models the gateway does not serve: their requests get OpenAI's 404 ``model_not_found``."""
    advertise_endpoints: bool = False
    """List ``supported_endpoint_types`` per model in ``GET /v1/models``, as newer new-api builds do:
    ``["openai"]`` for chat-only models, ``["openai", "openai-response"]`` for the others."""


@dataclass
class StandInState:
    """What one stand-in holds between requests: its key, its faults, the bodies and paths received,
    stored responses (for ``previous_response_id``), and request counts.
    """

    api_key: str | None = None
    faults: Faults = field(default_factory=Faults)
    requests: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    """Bodies of the requests to either endpoint that were JSON objects, oldest first."""
    paths: list[str] = field(default_factory=list[str])
    """The path of each request that passed the key check (refused ones after it too), oldest first."""
    stored: dict[str, dict[str, Any]] = field(default_factory=dict[str, dict[str, Any]])
    count: int = 0
    active: int = 0
    """Requests being answered right now (a stream counts until it ends or the client leaves)."""
    peak_active: int = 0
    """The most requests ever answered at once."""


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


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def message_text(item: dict[str, Any]) -> str:
    """The text of a message whose ``content`` is a string or a list of text parts."""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if is_array(content):
        return " ".join(str(p.get("text", "")) for p in content if is_object(p))
    return ""


def received_media(messages: list[dict[str, Any]]) -> str:
    """What images and documents the user messages carried, as the stand-in's answer reports them
    ("Received 1 image(s): image/png, 68 bytes."), or "" when none: so tests can check the whole path."""
    images: list[str] = []
    files: list[str] = []
    for message in messages:
        content: object = message.get("content")
        if message.get("role") != "user" or not is_array(content):
            continue
        for part in content:
            if not is_object(part):
                continue
            kind = part.get("type")
            if kind == "input_image":
                images.append(_described(part.get("image_url")))
            elif kind == "image_url":
                inner: Any = part.get("image_url")
                images.append(_described(inner.get("url") if is_object(inner) else None))
            elif kind == "input_file":
                files.append(_described(part.get("file_data") or part.get("file_url"), part.get("filename")))
            elif kind == "file":
                inner = part.get("file")
                files.append(
                    _described(
                        inner.get("file_data") if is_object(inner) else None,
                        inner.get("filename") if is_object(inner) else None,
                    )
                )
    said = [
        f"{len(found)} {what}(s): {'; '.join(found)}" for what, found in (("image", images), ("file", files)) if found
    ]
    return f"Received {' and '.join(said)}." if said else ""


def _described(reference: object, name: object = None) -> str:
    named = f"{name} " if isinstance(name, str) and name else ""
    if not isinstance(reference, str):
        return f"{named}(nothing)"
    if reference.startswith("data:"):
        header, _, payload = reference.partition(",")
        size = len(payload) * 3 // 4 - payload[-2:].count("=")
        return f"{named}{header[5:].removesuffix(';base64')}, {size} bytes"
    return f"{named}by URL {reference[:80]}"


# --- checks --------------------------------------------------------------------------------------


def strict_problem(schema: Any, path: str = "") -> str | None:
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
            if problem := strict_problem(sub, f"{path}, 'properties', '{key}'" if path else f"'properties', '{key}'"):
                return problem
    for key in ("items",):
        if is_object(schema.get(key)) and (problem := strict_problem(schema[key], f"{path}, '{key}'")):
            return problem
    options: Any = schema.get("anyOf") or []
    for i, option in enumerate(options):
        if problem := strict_problem(option, f"{path}, 'anyOf', '{i}'"):
            return problem
    defs: Any = schema.get("$defs") or {}
    for name, sub in defs.items():
        if problem := strict_problem(sub, f"{path}, '$defs', '{name}'"):
            return problem
    return None


def check_name(name: Any, where: str) -> None:
    """Refuse a tool (or namespace) name at ``where`` that OpenAI refuses: ``[a-zA-Z0-9_-]``, 1 to 64 long."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise RequestError(
            400,
            f"Invalid '{where}.name': string does not match pattern. Expected a string "
            "that matches the pattern '^[a-zA-Z0-9_-]+$'.",
            param=f"{where}.name",
            code="invalid_value",
        )


def check_function(name: Any, params: Any, strict: bool, where: str) -> None:
    """Refuse a function definition at ``where`` (``tools[0]``, ``tools[0].function``) as OpenAI does."""
    check_name(name, where)
    if params is not None and (not is_object(params) or params.get("type", "object") != "object"):
        raise RequestError(
            400,
            f"Invalid schema for function '{name}': schema must be a JSON Schema of "
            "'type: \"object\"', got 'type: \"None\"'.",
            param=f"{where}.parameters",
            code="invalid_function_parameters",
        )
    if strict and (problem := strict_problem(params or {"type": "object"})):
        raise RequestError(
            400,
            f"Invalid schema for function '{name}': {problem}",
            param=f"{where}.parameters",
            code="invalid_function_parameters",
        )


# --- planning ------------------------------------------------------------------------------------


def plan_turn(
    prompt: str, tools: list[dict[str, Any]], done: set[str], tool_choice: Any, parallel: bool, faults: Faults
) -> list[model.PlannedCall]:
    """This turn's calls; ``tools`` and ``tool_choice`` in the Responses shape (``name`` at the top).

    ``tools`` are the functions on offer: a function of a namespace carries its ``namespace`` (see
    ``model.plan_calls``); tools of other types are never called."""
    first = next((t for t in tools if t.get("type") == "function"), None)
    if faults.tool_call_loop and first is not None:
        arguments = model.plan_arguments(prompt, first.get("parameters") or {}, False)
        planned = [model.PlannedCall(first["name"], arguments, first.get("namespace"))] * faults.calls_per_turn
    else:
        planned = model.plan_calls(prompt, tools, done, tool_choice, parallel)
    if faults.call_unknown_tool and faults.call_unknown_tool not in done:
        planned.append(model.PlannedCall(faults.call_unknown_tool, {}))
    return planned


def call_ids(count: int, faults: Faults) -> list[str]:
    """The call ids of a turn's ``count`` calls."""
    if faults.same_call_ids:
        return ["call_same"] * count
    return [new_id("call") for _ in range(count)]


def call_arguments(call: model.PlannedCall, faults: Faults) -> str:
    return faults.bad_arguments if faults.bad_arguments is not None else json.dumps(call.arguments)


# --- replies -------------------------------------------------------------------------------------


def ok_with_error() -> JSONResponse:
    """A 200 whose body is an error object, as new-api sends when an upstream reply is unreadable."""
    message = "upstream error: bad_response_body (offline stand-in fault)"
    return JSONResponse(
        {"error": {"message": message, "type": "new_api_error", "param": "", "code": "bad_response_body"}}
    )


def json_reply(payload: dict[str, Any], faults: Faults) -> Response:
    if faults.malformed_json:
        return Response(json.dumps(payload)[:100], media_type="application/json")
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8", "backslashreplace")  # see _sse
    return Response(body, media_type="application/json")


Frame = tuple[str | None, str]
"""One SSE event: its ``event:`` name (None: a data-only line) and its ``data:`` JSON text."""


def stream_reply(
    frames: list[Frame], state: StandInState, *, error_frame: Callable[[int], str], done: bool
) -> StreamingResponse:
    """Stream ``frames`` with the stream faults applied; ``error_frame(n)`` is the whole error event
    sent in place of frame ``n``; ``done`` ends a complete stream with ``data: [DONE]``."""
    return StreamingResponse(
        _counted(_sse(frames, state.faults, error_frame, done), state),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def _counted(chunks: AsyncIterator[bytes], state: StandInState) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        state.active -= 1


async def _sse(
    frames: list[Frame], faults: Faults, error_frame: Callable[[int], str], done: bool
) -> AsyncIterator[bytes]:
    if faults.first_byte_delay:
        await anyio.sleep(faults.first_byte_delay)
    for number, (name, data) in enumerate(frames):
        if faults.ping and number % 3 == 0:
            yield b": PING\n\n"
        if faults.cut_stream_after is not None and number >= faults.cut_stream_after:
            return
        if faults.stall_after is not None and number >= faults.stall_after:
            while True:
                yield b": PING\n\n"
                await anyio.sleep(0.2)
        if faults.reset_stream_after is not None and number >= faults.reset_stream_after:
            raise ConnectionResetError("offline stand-in: stream reset (fault)")
        if faults.error_event_after is not None and number >= faults.error_event_after:
            yield error_frame(number).encode()
            return
        if faults.malformed_json and number == 2:
            data = data[: len(data) // 2]
        head = "" if name is None or faults.no_event_lines else f"event: {name}\n"
        # A lone surrogate inside a JSON string goes out as its \\uXXXX escape, as a gateway would send it.
        yield f"{head}data: {data}\n\n".encode("utf-8", "backslashreplace")
    if done:
        yield b"data: [DONE]\n\n"
