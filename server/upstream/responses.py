"""``POST {base_url}/responses``: the Responses wire client, and the adapter behind the neutral interface.

``ResponsesClient`` sends a wire body and reads the reply, as SSE (the default) or plain JSON, leniently
(``wire``). ``ResponsesModel`` is the ``Model`` adapter: it builds the body from a ``ModelRequest``
(stateless replay with ``store: false``, or ``previous_response_id``; reasoning ``include``; strict
schemas; hosted web search) and turns the reply into a ``ModelResponse``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from server import errors
from server.upstream.gateway import (
    Gateway,
    ReplyLimits,
    RetryPolicy,
    loads,
    map_http_errors,
    parse_retry_after,
    tokens,
    unique_ids,
)
from server.upstream.jsonvalues import is_array, is_object
from server.upstream.model import (
    Attachment,
    FunctionCall,
    FunctionOutput,
    Item,
    Message,
    ModelRequest,
    ModelResponse,
    OnEvent,
    Reasoning,
    StreamEvent,
    TokenUsage,
)
from server.upstream.schemas import is_strict
from server.upstream.translation import FunctionSpec
from server.upstream.wire import ResponseObject, parse_response, read_response, read_terminal

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], Awaitable[None]]

PATH = "/responses"
_TERMINAL = {"response.completed", "response.incomplete", "response.failed"}
_ECHOES = {"response.created", "response.in_progress", "response.queued"}
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5|codex)", re.IGNORECASE)


class ResponsesClient:
    """Sends requests to ``POST {base_url}/responses`` and returns parsed responses, retrying as ``retry`` allows.

    Every failure is raised as a ``server.errors`` error with the API key masked; a stream that has
    already started is never retried.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        stream: bool = True,
        retry: RetryPolicy | None = None,
        limits: ReplyLimits | None = None,
    ) -> None:
        self.gateway = Gateway(http, base_url=base_url, api_key=api_key, retry=retry, limits=limits)
        self.stream = stream

    @property
    def retry(self) -> RetryPolicy:
        return self.gateway.retry

    def __repr__(self) -> str:  # never the key
        return f"ResponsesClient(url={self.gateway.base_url + PATH!r}, stream={self.stream})"

    # --- the public call ------------------------------------------------------------------

    async def create(
        self, body: dict[str, Any], *, stream: bool | None = None, on_event: EventCallback | None = None
    ) -> ResponseObject:
        """POST ``body`` and return the parsed response, retrying what the policy allows."""
        use_stream = self.stream if stream is None else stream

        async def read(response: httpx.Response) -> ResponseObject:
            if use_stream and "text/event-stream" in response.headers.get("content-type", ""):
                return await self._read_stream(response, on_event)
            return self._read_json(await self.gateway.body(response), response.status_code)

        return await self.gateway.post(PATH, {**body, "stream": use_stream}, read, stream=use_stream)

    def _read_json(self, body: bytes, status: int) -> ResponseObject:
        reply = read_response(body)
        if reply is not None and not (reply.error and "output" not in reply.model_fields_set):
            return reply
        data = loads(body, f"the reply (HTTP {status})")
        if is_object(data) and "error" in data and data["error"] and "output" not in data:
            raise self.gateway.error_in_body(data["error"], status)
        return parse_response(data)

    async def _read_stream(self, response: httpx.Response, on_event: EventCallback | None) -> ResponseObject:
        assembly = _Assembly()
        final: ResponseObject | None = None
        events = self.gateway.events(response)
        try:
            with map_http_errors():
                async for sse in events:
                    data_text = sse.data.strip()
                    if not data_text or data_text == "[DONE]" or final is not None:
                        continue  # past the terminal event: read on so the connection can be reused
                    if sse.event in _ECHOES or (sse.event == "message" and _echo(data_text)):
                        continue  # they repeat the whole request: nothing in them is used, so never decoded
                    if sse.event == "response.output_text.delta":
                        # The most frequent event, and the final text arrives whole later: not parsed.
                        if on_event is not None:
                            await on_event(sse.event, {})
                        continue
                    if sse.event in _TERMINAL and (read := read_terminal(data_text)) and read[0] in (None, *_TERMINAL):
                        final = assembly.complete(read[1])  # the usual one: read in one pass, echoes skipped
                        continue
                    data = loads(data_text, "a stream event")
                    if not is_object(data):
                        raise errors.MalformedResponseError("a stream event is not a JSON object")
                    kind: Any = data.get("type") or (sse.event if sse.event != "message" else None)
                    if kind == "error" or (kind is None and "error" in data):
                        error_field = data.get("error")
                        raise self.gateway.stream_error(error_field if is_object(error_field) else data)
                    if kind in _TERMINAL:
                        final = assembly.complete(parse_response(data.get("response")))
                        continue
                    assembly.add(kind, data)
                    if on_event is not None:
                        await on_event(str(kind), data)
        except errors.UpstreamError as exc:
            exc.stream_started = events.count > 0  # never retry a stream that started: it was billed
            raise
        if final is None:
            raise self.gateway.cut_stream(
                f"after {events.count} event(s) without a terminal event (response.completed)"
            )
        return final


def _usage(usage: object) -> TokenUsage | None:
    if not is_object(usage):
        return None
    inputs: object = usage.get("input_tokens_details")
    outputs: object = usage.get("output_tokens_details")
    return TokenUsage(
        input_tokens=tokens(usage.get("input_tokens")),
        output_tokens=tokens(usage.get("output_tokens")),
        cached_tokens=tokens(inputs.get("cached_tokens")) if is_object(inputs) else 0,
        reasoning_tokens=tokens(outputs.get("reasoning_tokens")) if is_object(outputs) else 0,
    )


def _echo(data: str) -> bool:
    """A data-only event (no ``event:`` line, as LiteLLM sends) that is one of the request echoes."""
    head = data[:80]
    return any(kind in head for kind in _ECHOES)


class _Assembly:
    """Output items built from stream events; argument deltas are kept as fragments and joined once."""

    def __init__(self) -> None:
        self._items: dict[int, dict[str, Any]] = {}
        self._arguments: dict[int, list[str]] = {}

    def add(self, kind: Any, data: dict[str, Any]) -> None:
        index: object = data.get("output_index")
        if not isinstance(index, int):
            return
        item: object = data.get("item")
        if kind in ("response.output_item.added", "response.output_item.done") and is_object(item):
            self._items[index] = dict(item)
            if kind == "response.output_item.done" or isinstance(item.get("arguments"), str):
                self._arguments.pop(index, None)  # the item carries its whole arguments
        elif kind == "response.function_call_arguments.delta" and index in self._items:
            self._arguments.setdefault(index, []).append(str(data.get("delta") or ""))
        elif kind == "response.function_call_arguments.done" and index in self._items:
            self._items[index]["arguments"] = data.get("arguments", self._items[index].get("arguments"))
            self._arguments.pop(index, None)

    def complete(self, final: ResponseObject) -> ResponseObject:
        """``final`` (the terminal event's response), with the streamed items as output if it has none."""
        if not final.output:
            final.output = self.items()
        return final

    def items(self) -> list[dict[str, Any]]:
        for index, fragments in self._arguments.items():
            self._items[index]["arguments"] = str(self._items[index].get("arguments") or "") + "".join(fragments)
        self._arguments.clear()
        return [self._items[i] for i in sorted(self._items)]


# --- the adapter ----------------------------------------------------------------------------


def function_tool(spec: FunctionSpec) -> dict[str, Any]:
    """A function as the Responses API takes it."""
    return {
        "type": "function",
        "name": spec.api_name,
        "description": spec.description,
        "parameters": spec.parameters,
        "strict": spec.strict,
    }


def wire_item(item: Item) -> dict[str, Any] | None:
    """How a neutral item is sent as Responses input, or None to leave it out; made once per item."""
    return item.wire_form("responses", _wire_item)


def _wire_item(item: Item) -> dict[str, Any] | None:
    if isinstance(item, Message):
        if item.role == "user":
            if item.attachments:
                text = [{"type": "input_text", "text": item.text}] if item.text else []
                parts = [*text, *map(_input_part, item.attachments)]
                return {"type": "message", "role": "user", "content": parts}
            return {"type": "message", "role": "user", "content": item.text}
        if not item.text:
            return None
        content: list[dict[str, Any]] = [{"type": "output_text", "text": item.text, "annotations": []}]
        return {"type": "message", "role": "assistant", "content": content}
    if isinstance(item, FunctionCall):
        return item.model_dump(exclude_none=True)
    if isinstance(item, FunctionOutput):
        return item.model_dump()
    # Without encrypted_content a reasoning item can only be found by id, which store:false forbids.
    return dict(item.wire) if item.wire.get("encrypted_content") else None


def _input_part(attachment: Attachment) -> dict[str, Any]:
    """An image as ``input_image``, a document as ``input_file`` (by URL, or its bytes as a data URI)."""
    if attachment.kind == "image":
        return {"type": "input_image", "image_url": attachment.reference(), "detail": attachment.detail}
    if attachment.url is not None:
        return {"type": "input_file", "file_url": attachment.url}
    return {"type": "input_file", "filename": attachment.name or "document", "file_data": attachment.reference()}


def neutral_item(item: dict[str, Any], clean: Callable[[str], str]) -> Item | None:
    """A Responses output item in neutral form, or None for what cannot be replayed (hosted tool calls).

    Every string the gateway wrote passes through ``clean`` (key masked, lone surrogates replaced)."""
    kind = item.get("type")
    if kind == "function_call":
        fields = {k: clean(str(item[k])) for k in ("call_id", "name", "arguments", "id") if item.get(k) is not None}
        return FunctionCall.model_validate(fields)
    if kind == "message":
        parts: object = item.get("content")
        texts: list[str] = []
        for part in parts if is_array(parts) else []:
            if is_object(part) and part.get("type") == "output_text":
                texts.append(str(part.get("text", "")))
            elif is_object(part) and part.get("type") == "refusal":
                texts.append(f"[refusal] {part.get('refusal', '')}")
        return Message(role="assistant", text=clean("".join(texts)))
    if kind == "reasoning":
        return Reasoning(wire=dict(item))
    return None  # hosted tool items (web_search_call, ...) are not replayable without storage


@dataclass
class ResponsesModel:
    """The ``Model`` adapter for ``POST /responses``: neutral request in, neutral response out."""

    client: ResponsesClient
    conversation_mode: Literal["replay", "previous_response_id"] = "replay"
    api: Literal["responses"] = "responses"

    def build(self, request: ModelRequest) -> dict[str, Any]:
        """The wire body for one turn."""
        stored = self.conversation_mode == "previous_response_id"
        body: dict[str, Any] = {"model": request.model, "parallel_tool_calls": request.parallel_tool_calls}
        items = request.items
        if stored and request.previous_response_id:
            body["previous_response_id"] = request.previous_response_id
            items = items[request.new_from :]
        body["input"] = [w for w in (wire_item(i) for i in items) if w is not None]
        body["store"] = stored
        if request.instructions:
            body["instructions"] = request.instructions
        tools = [function_tool(t) for t in request.tools]
        if request.web_search:
            tools.append({"type": "web_search"})
        if tools:
            body["tools"] = tools
            choice = request.tool_choice
            body["tool_choice"] = (
                choice if choice in ("auto", "none", "required") else {"type": "function", "name": choice}
            )
        if request.reasoning_effort:
            body["reasoning"] = {"effort": request.reasoning_effort}
        reasoning = request.reasoning_effort is not None or bool(_REASONING_MODEL.match(request.model))
        if reasoning and not stored:
            body["include"] = ["reasoning.encrypted_content"]
        if request.response_format is not None:
            schema = request.response_format
            body["text"] = {
                "format": {"type": "json_schema", "name": "result", "schema": schema, "strict": is_strict(schema)}
            }
        if request.max_output_tokens:
            body["max_output_tokens"] = request.max_output_tokens
        if request.metadata:
            body["metadata"] = request.metadata
        return body

    async def respond(self, request: ModelRequest, on_event: OnEvent | None = None) -> ModelResponse:
        async def heard(kind: str, data: dict[str, Any]) -> None:
            if on_event is None:
                return
            if kind in ("response.content_part.added", "response.output_text.delta"):
                await on_event(StreamEvent("text"))
            elif kind == "response.output_item.added":
                item: object = data.get("item")
                if is_object(item) and item.get("type") == "function_call":
                    await on_event(StreamEvent("function_call", str(item.get("name"))))

        reply = await self.client.create(self.build(request), on_event=heard)
        return self.neutral(reply)

    def neutral(self, reply: ResponseObject) -> ModelResponse:
        clean = self.client.gateway.clean
        calls = reply.function_calls()  # raises MalformedResponseError for a call without call_id, name or arguments
        unique_ids(c.call_id for c in calls)
        output = [n for n in (neutral_item(i, clean) for i in reply.output) if n is not None]
        model = clean(reply.model) if reply.model else None
        response = ModelResponse(api="responses", output=output, id=reply.id and clean(reply.id), model=model)
        response.usage = _usage(reply.usage)
        if reply.status == "failed":
            error = reply.error or {}
            response.status = "failed"
            code = f" [code {clean(str(error['code']))[:100]}]" if error.get("code") else ""
            response.error = (
                f"the model's response failed: {clean(str(error.get('message', 'no reason given')))[:2000]}"
            )
            response.error += code
        elif reply.status == "incomplete":
            response.status = "incomplete"
            response.incomplete_reason = clean(str((reply.incomplete_details or {}).get("reason", "unknown")))[:200]
        return response


__all__ = ["PATH", "ResponsesClient", "ResponsesModel", "RetryPolicy", "function_tool", "parse_retry_after"]
