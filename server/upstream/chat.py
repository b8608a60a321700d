"""``POST {base_url}/chat/completions``: the endpoint every gateway serves for every model.

``ChatModel`` is the ``Model`` adapter. It replays the conversation as messages (instructions as a
``system`` message; each turn's calls as one ``assistant`` message with all its ``tool_calls``, followed
by one ``tool`` message per call), offers functions as ``{"type": "function", "function": ...}``, and
reads the reply as SSE chunks (tool-call fragments assembled by ``index``, arguments joined once at the
end) or as plain JSON. A stream that ends without a ``finish_reason`` is a cut reply, never an answer;
``finish_reason: "length"`` is incomplete.

Quirks kept here: strict schemas and ``max_completion_tokens`` only for OpenAI models (others get the
tool's own schema and ``max_tokens``); no hosted web search and no ``metadata`` on this API (the
response says so in its notes); a tool call without an ``id`` gets one, so its output can be paired.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from server import errors
from server.upstream.gateway import Gateway, ReplyLimits, RetryPolicy, loads, map_http_errors, tokens, unique_ids
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
    StreamEvent,
    TokenUsage,
)
from server.upstream.schemas import is_strict
from server.upstream.translation import FunctionSpec

PATH = "/chat/completions"
_OPENAI_MODEL = re.compile(r"^(gpt-|o\d|chatgpt-|codex)", re.IGNORECASE)


def is_openai_model(model: str) -> bool:
    """Whether ``model`` (possibly ``vendor/model``) is an OpenAI model, which takes strict schemas."""
    return bool(_OPENAI_MODEL.match(model.rsplit("/", 1)[-1]))


# --- the reply, assembled ---------------------------------------------------------------------


@dataclass
class _Call:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list[str])


@dataclass
class ChatReply:
    """A chat completion's first choice, assembled from a JSON reply or from stream chunks."""

    id: str | None = None
    model: str | None = None
    content: list[str] = field(default_factory=list[str])
    calls: dict[int, _Call] = field(default_factory=dict[int, _Call])
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None

    def add_chunk(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        """Fold one stream chunk in; returns what the model started doing, for progress."""
        self._add_envelope(chunk)
        events: list[StreamEvent] = []
        choice = _first_choice(chunk)
        if choice is None:
            return events
        delta: object = choice.get("delta")
        if is_object(delta):
            text: object = delta.get("content")
            if isinstance(text, str) and text:
                if not self.content:
                    events.append(StreamEvent("text"))
                self.content.append(text)
            fragments: object = delta.get("tool_calls")
            for position, fragment in enumerate(fragments if is_array(fragments) else []):
                if is_object(fragment) and (name := self._add_fragment(fragment, position)) is not None:
                    events.append(StreamEvent("function_call", name))
        if (reason := choice.get("finish_reason")) is not None:
            self.finish_reason = str(reason)
        return events

    def add_message(self, data: dict[str, Any]) -> None:
        """Take a whole (non-stream) reply."""
        self._add_envelope(data)
        choice = _first_choice(data)
        if choice is None:
            raise errors.MalformedResponseError("the chat reply has no choices")
        message: object = choice.get("message")
        if not is_object(message):
            raise errors.MalformedResponseError("the chat reply's choice has no message")
        text: object = message.get("content")
        if isinstance(text, str):
            self.content.append(text)
        calls: object = message.get("tool_calls")
        for position, call in enumerate(calls if is_array(calls) else []):
            if is_object(call):
                self._add_fragment(call, position)
        reason: object = choice.get("finish_reason")
        self.finish_reason = str(reason) if reason is not None else "stop"

    def _add_envelope(self, data: dict[str, Any]) -> None:
        if isinstance(rid := data.get("id"), str):
            self.id = rid
        if isinstance(model := data.get("model"), str):
            self.model = model
        if is_object(usage := data.get("usage")):
            self.usage = usage

    def _add_fragment(self, fragment: dict[str, Any], position: int) -> str | None:
        """Add a tool-call fragment; returns the function's name when this fragment first names it."""
        index: object = fragment.get("index")
        call = self.calls.setdefault(index if isinstance(index, int) else position, _Call())
        if isinstance(cid := fragment.get("id"), str) and cid:
            call.id = cid
        function: object = fragment.get("function")
        if not is_object(function):
            return None
        named = None
        if isinstance(name := function.get("name"), str) and name and call.name is None:
            call.name = named = name
        if isinstance(arguments := function.get("arguments"), str):
            call.arguments.append(arguments)
        elif arguments is not None:
            call.arguments.append(json.dumps(arguments))  # some gateways send an object
        return named


def _first_choice(data: dict[str, Any]) -> dict[str, Any] | None:
    choices: object = data.get("choices")
    if not is_array(choices) or not choices:
        return None
    first = choices[0]
    return first if is_object(first) else None


# --- the wire client --------------------------------------------------------------------------


class ChatClient:
    """Sends a chat completions body and assembles the reply; failures as ``server.errors``, key masked."""

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

    def __repr__(self) -> str:  # never the key
        return f"ChatClient(url={self.gateway.base_url + PATH!r}, stream={self.stream})"

    async def create(self, body: dict[str, Any], on_event: OnEvent | None = None) -> ChatReply:
        stream = self.stream
        payload = {**body, "stream": stream}
        if stream:
            payload["stream_options"] = {"include_usage": True}

        async def read(response: httpx.Response) -> ChatReply:
            if stream and "text/event-stream" in response.headers.get("content-type", ""):
                return await self._read_stream(response, on_event)
            return self._read_json(await self.gateway.body(response), response.status_code)

        return await self.gateway.post(PATH, payload, read, stream=stream)

    def _read_json(self, body: bytes, status: int) -> ChatReply:
        data = loads(body, f"the reply (HTTP {status})")
        if not is_object(data):
            raise errors.MalformedResponseError("the chat reply is not a JSON object")
        if data.get("error") and "choices" not in data:
            raise self.gateway.error_in_body(data["error"], status)
        reply = ChatReply()
        reply.add_message(data)
        return reply

    async def _read_stream(self, response: httpx.Response, on_event: OnEvent | None) -> ChatReply:
        reply = ChatReply()
        events = self.gateway.events(response)
        try:
            with map_http_errors():
                async for sse in events:
                    text = sse.data.strip()
                    if not text:
                        continue
                    if text == "[DONE]":
                        break
                    chunk = loads(text, "a stream chunk")
                    if not is_object(chunk):
                        raise errors.MalformedResponseError("a stream chunk is not a JSON object")
                    if is_object(error := chunk.get("error")) or (error and "choices" not in chunk):
                        raise self.gateway.stream_error(error if is_object(error) else {"message": str(error)})
                    for event in reply.add_chunk(chunk):
                        if on_event is not None:
                            await on_event(event)
        except errors.UpstreamError as exc:
            exc.stream_started = events.count > 0  # never retry a stream that started: it was billed
            raise
        if reply.finish_reason is None:
            raise self.gateway.cut_stream(f"after {events.count} chunk(s) without a finish_reason: the reply was cut")
        return reply


# --- the adapter ------------------------------------------------------------------------------


def function_tool(spec: FunctionSpec, model: str) -> dict[str, Any]:
    """A function as Chat Completions takes it: strict only for OpenAI models."""
    function: dict[str, Any] = {"name": spec.api_name, "description": spec.description}
    if is_openai_model(model):
        function["parameters"], function["strict"] = spec.parameters, spec.strict
    else:
        function["parameters"] = spec.schema
    return {"type": "function", "function": function}


def messages(instructions: str | None, items: list[Item] | tuple[Item, ...]) -> list[dict[str, Any]]:
    """The conversation as chat messages: each turn's calls in one assistant message, then their outputs."""
    out: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        if isinstance(item, Message):
            if item.role == "user" and item.attachments:
                text = [{"type": "text", "text": item.text}] if item.text else []
                parts = [*text, *map(_content_part, item.attachments)]
                out.append({"role": "user", "content": parts})
            elif item.role == "user":
                out.append({"role": "user", "content": item.text})
            elif item.text:
                out.append({"role": "assistant", "content": item.text})
        elif isinstance(item, FunctionCall):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionOutput):
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return out


def _content_part(attachment: Attachment) -> dict[str, Any]:
    """An image as an ``image_url`` part, a document as a ``file`` part (its bytes: chat has no file URLs)."""
    if attachment.kind == "image":
        return {"type": "image_url", "image_url": {"url": attachment.reference(), "detail": attachment.detail}}
    if attachment.url is not None:
        raise errors.UnsupportedInputError(
            f"Chat Completions cannot take a document by URL ({attachment.url})",
            hint="pass the file as a local path or a data: URI, or use a model the gateway serves on /v1/responses",
        )
    return {"type": "file", "file": {"filename": attachment.name or "document", "file_data": attachment.reference()}}


@dataclass
class ChatModel:
    """The ``Model`` adapter for ``POST /chat/completions``."""

    client: ChatClient
    api: Literal["chat"] = "chat"

    def build(self, request: ModelRequest) -> tuple[dict[str, Any], list[str]]:
        """The wire body for one turn, and notes on what this API could not take."""
        notes: list[str] = []
        openai = is_openai_model(request.model)
        body: dict[str, Any] = {"model": request.model, "messages": messages(request.instructions, list(request.items))}
        if request.tools:
            body["tools"] = [function_tool(t, request.model) for t in request.tools]
            choice = request.tool_choice
            body["tool_choice"] = (
                choice if choice in ("auto", "none", "required") else {"type": "function", "function": {"name": choice}}
            )
            body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.reasoning_effort:
            body["reasoning_effort"] = request.reasoning_effort
        if request.response_format is not None:
            schema = request.response_format
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "result", "schema": schema, "strict": is_strict(schema)},
            }
        if request.max_output_tokens:
            body["max_completion_tokens" if openai else "max_tokens"] = request.max_output_tokens
        if request.web_search:
            notes.append("web_search exists only on the Responses API; this model is reached over Chat Completions")
        if request.metadata:
            notes.append("metadata is not sent over Chat Completions")
        return body, notes

    async def respond(self, request: ModelRequest, on_event: OnEvent | None = None) -> ModelResponse:
        body, notes = self.build(request)
        reply = await self.client.create(body, on_event)
        response = self.neutral(reply)
        response.notes = notes + response.notes
        return response

    def neutral(self, reply: ChatReply) -> ModelResponse:
        clean = self.client.gateway.clean
        output: list[Item] = []
        text = "".join(reply.content)
        if text:
            output.append(Message(role="assistant", text=clean(text)))
        model = clean(reply.model) if reply.model else None
        response = ModelResponse(api="chat", output=output, id=reply.id and clean(reply.id), model=model)
        for index in sorted(reply.calls):
            call = reply.calls[index]
            if not call.name:
                raise errors.MalformedResponseError(f"tool call {index} in the chat reply has no function name")
            if not call.id:
                call.id = f"call_{secrets.token_hex(8)}"
                response.notes.append(f"the gateway sent tool call {clean(call.name)} without an id; one was assigned")
            arguments = clean("".join(call.arguments))
            output.append(FunctionCall(call_id=clean(call.id), name=clean(call.name), arguments=arguments))
        unique_ids(c.call_id for c in response.function_calls)
        response.usage = _usage(reply.usage)
        if reply.finish_reason == "length":
            response.status, response.incomplete_reason = "incomplete", "max_output_tokens"
        elif reply.finish_reason == "content_filter":
            response.status, response.incomplete_reason = "incomplete", "content_filter"
        return response


def _usage(usage: dict[str, Any] | None) -> TokenUsage | None:
    if usage is None:
        return None
    prompt: object = usage.get("prompt_tokens_details")
    completion: object = usage.get("completion_tokens_details")
    return TokenUsage(
        input_tokens=tokens(usage.get("prompt_tokens")),
        output_tokens=tokens(usage.get("completion_tokens")),
        cached_tokens=tokens(prompt.get("cached_tokens")) if is_object(prompt) else 0,
        reasoning_tokens=tokens(completion.get("reasoning_tokens")) if is_object(completion) else 0,
    )


__all__ = ["PATH", "ChatClient", "ChatModel", "ChatReply", "function_tool", "is_openai_model", "messages"]
