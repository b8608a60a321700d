"""Lenient models of what the Responses endpoint sends back (the Responses adapter's wire side).

Gateways add, drop and rename fields, so every model accepts extras and defaults what it
can; raw output items are kept as dicts so they can be replayed verbatim. A response's extras
(the request echoed back: tools, instructions) are ignored, never built. Only what the
bridge acts on is checked: ``status``, and that each ``function_call`` has string
``call_id``, ``name`` and ``arguments``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.errors import MalformedResponseError
from server.upstream.jsonvalues import is_object


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(_Lenient):
    """A ``function_call`` output item: the call the model wants made, arguments as a JSON string."""

    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class ResponseObject(BaseModel):
    """One Responses API response: status, raw output items, usage and any error.

    Output items stay dicts so they can be replayed; ``function_calls()`` checks only the calls.
    """

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    model: str | None = None
    status: str | None = None
    output: list[dict[str, Any]] = Field(default_factory=list[dict[str, Any]])
    usage: Any = None
    """Token counts as the gateway sent them: read leniently by the adapter (``gateway.tokens``)."""
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None

    def function_calls(self) -> list[FunctionCall]:
        calls: list[FunctionCall] = []
        for item in self.output:
            if item.get("type") != "function_call":
                continue
            try:
                calls.append(FunctionCall.model_validate(item))
            except ValidationError as exc:
                raise MalformedResponseError(
                    f"a function_call item lacks call_id, name or arguments: {exc.errors()[0]['msg']}"
                ) from exc
        return calls

    def text(self) -> str:
        """The joined ``output_text`` of every message item (not a wire field; see the reference)."""
        parts: list[str] = []
        for item in self.output:
            if item.get("type") == "message":
                content: Any = item.get("content") or []
                for part in content:
                    if is_object(part) and part.get("type") == "output_text":
                        parts.append(str(part.get("text", "")))
                    elif is_object(part) and part.get("type") == "refusal":
                        parts.append(f"[refusal] {part.get('refusal', '')}")
        return "".join(parts)


class _TerminalEvent(BaseModel):
    type: str | None = None
    response: ResponseObject


def read_response(data: str | bytes) -> ResponseObject | None:
    """The response in a reply body, read straight from its JSON by pydantic: what it echoes of the
    request is skipped, never built (1 ms for a reply that echoes a thousand functions, against 5 for
    ``json.loads``). None when it does not read so; the caller decodes it the long way, which gives the
    exact error (or takes what pydantic's parser refuses and ``json`` does not: a lone surrogate)."""
    try:
        return ResponseObject.model_validate_json(data)
    except ValidationError:
        return None


def read_terminal(data: str) -> tuple[str | None, ResponseObject] | None:
    """A terminal stream event's ``type`` and the response it carries, read as ``read_response`` reads."""
    try:
        event = _TerminalEvent.model_validate_json(data)
    except ValidationError:
        return None
    return event.type, event.response


def parse_response(data: Any) -> ResponseObject:
    if not isinstance(data, dict):
        raise MalformedResponseError(f"expected a JSON object, got {type(data).__name__}")
    try:
        return ResponseObject.model_validate(data)
    except ValidationError as exc:
        raise MalformedResponseError(f"not a Responses object: {exc.errors()[0]['msg']}") from exc
